package deploy

import (
	"context"
	"fmt"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/dynamodb"
	"github.com/aws/aws-sdk-go-v2/service/dynamodb/types"

	"github.com/slipway-ci/slipway/internal/ddb"
)

// CARecord is the deployment's CA certificate, an item of its table that
// the first function to need it writes (pki.EnsureCA).
type CARecord struct {
	DB    ddb.DB
	Table string
}

const (
	attrCert = "cert_der"
	caSK     = "CA"
)

func caKey() map[string]types.AttributeValue { return ddb.Key(ddb.DeploymentPartition, caSK) }

// LoadCA returns the stored CA certificate, or nil.
func (s *CARecord) LoadCA(ctx context.Context) ([]byte, error) {
	out, err := s.DB.GetItem(ctx, &dynamodb.GetItemInput{TableName: aws.String(s.Table), Key: caKey(), ConsistentRead: aws.Bool(true)})
	if err != nil {
		return nil, fmt.Errorf("read CA certificate: %w", err)
	}
	if b, ok := out.Item[attrCert].(*types.AttributeValueMemberB); ok {
		return b.Value, nil
	}
	return nil, nil
}

// StoreCAIfAbsent stores der unless a certificate is there, and returns the
// stored one.
func (s *CARecord) StoreCAIfAbsent(ctx context.Context, der []byte) ([]byte, error) {
	_, err := s.DB.UpdateItem(ctx, &dynamodb.UpdateItemInput{
		TableName:                 aws.String(s.Table),
		Key:                       caKey(),
		UpdateExpression:          aws.String("SET #c = :c"),
		ConditionExpression:       aws.String("attribute_not_exists(#c)"),
		ExpressionAttributeNames:  map[string]string{"#c": attrCert},
		ExpressionAttributeValues: map[string]types.AttributeValue{":c": &types.AttributeValueMemberB{Value: der}},
	})
	if err != nil && !ddb.IsConditionFailed(err) {
		return nil, fmt.Errorf("store CA certificate: %w", err)
	}
	return s.LoadCA(ctx)
}
