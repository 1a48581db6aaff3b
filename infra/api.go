package main

import (
	"fmt"
	"maps"
	"slices"
	"strings"

	"go.yaml.in/yaml/v3"
)

// route is one operation of the delegate API's OpenAPI document.
type route struct {
	method, path, operation string
	// parameters are API Gateway's names of the operation's parameters
	// (method.request.path.id, method.request.querystring.wait) and
	// whether each is required.
	parameters map[string]bool
	// body says whether the operation takes a JSON body.
	body bool
}

type openAPIParameter struct {
	Ref      string `yaml:"$ref"`
	Name     string `yaml:"name"`
	In       string `yaml:"in"`
	Required bool   `yaml:"required"`
}

type openAPIOperation struct {
	OperationID string             `yaml:"operationId"`
	Parameters  []openAPIParameter `yaml:"parameters"`
	RequestBody struct {
		Content map[string]any `yaml:"content"`
	} `yaml:"requestBody"`
}

// apiRoutes reads the operations of the OpenAPI document: every method and
// path the API Gateway will pass to the handler, with their parameters.
// API Gateway checks that a body is a JSON object; the rest of it is the
// handler's to validate against the same document, as it names every field
// that is wrong where API Gateway's validator answers "Invalid request body".
func apiRoutes(doc []byte) ([]route, error) {
	var d struct {
		Paths      map[string]map[string]yaml.Node `yaml:"paths"`
		Components struct {
			Parameters map[string]openAPIParameter `yaml:"parameters"`
		} `yaml:"components"`
	}
	if err := yaml.Unmarshal(doc, &d); err != nil {
		return nil, fmt.Errorf("openapi: %w", err)
	}
	resolve := func(p openAPIParameter) (openAPIParameter, error) {
		if p.Ref == "" {
			return p, nil
		}
		name, ok := strings.CutPrefix(p.Ref, "#/components/parameters/")
		resolved, found := d.Components.Parameters[name]
		if !ok || !found {
			return p, fmt.Errorf("openapi: parameter %s not found", p.Ref)
		}
		return resolved, nil
	}
	var routes []route
	for _, path := range slices.Sorted(maps.Keys(d.Paths)) {
		item := d.Paths[path]
		var shared []openAPIParameter
		if n, ok := item["parameters"]; ok {
			if err := n.Decode(&shared); err != nil {
				return nil, fmt.Errorf("openapi: %s: parameters: %w", path, err)
			}
		}
		for _, method := range slices.Sorted(maps.Keys(item)) {
			if method == "parameters" || method == "summary" || method == "description" {
				continue
			}
			var op openAPIOperation
			n := item[method]
			if err := n.Decode(&op); err != nil {
				return nil, fmt.Errorf("openapi: %s %s: %w", method, path, err)
			}
			_, body := op.RequestBody.Content["application/json"]
			r := route{method: strings.ToUpper(method), path: path, operation: op.OperationID, parameters: map[string]bool{}, body: body}
			for _, p := range append(slices.Clone(shared), op.Parameters...) {
				p, err := resolve(p)
				if err != nil {
					return nil, err
				}
				where := map[string]string{"path": "path", "query": "querystring", "header": "header"}[p.In]
				if where == "" {
					return nil, fmt.Errorf("openapi: %s %s: parameter %s in %q", method, path, p.Name, p.In)
				}
				r.parameters["method.request."+where+"."+p.Name] = p.Required || p.In == "path"
			}
			routes = append(routes, r)
		}
	}
	if len(routes) == 0 {
		return nil, fmt.Errorf("openapi: no operations")
	}
	return routes, nil
}
