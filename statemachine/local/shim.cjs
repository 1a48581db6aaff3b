// The local Step Functions: aws-local-stepfunctions executes the real state
// machine file, and this shim serves the part of the Step Functions API that
// Slipway's Go SFN client calls (AWS JSON 1.0: StartExecution,
// DescribeExecution, StopExecution, GetExecutionHistory, ListExecutions). It
// also does EventBridge's job on AWS: when an execution is aborted, fails or
// times out, it invokes the release function with the same "Step Functions
// Execution Status Change" event, because a Catch never fires for those.
//
// Lambda tasks go wherever AWS_ENDPOINT_URL_LAMBDA points (the local Lambda
// endpoint of `slipway local`). Started by internal/local; flags:
//   --definition FILE        the ASL, its function ARNs substituted
//   --state-machine-arn ARN  the ARN the Go client names
//   --release-function ARN   invoked on ABORTED / FAILED / TIMED_OUT
//   --port N                 0: any free port; the first line of stdout
//                            says "listening on 127.0.0.1:PORT"
'use strict';

const fs = require('node:fs');
const http = require('node:http');
const { parseArgs } = require('node:util');
const { StateMachine, ExecutionAbortedError, ExecutionTimeoutError } = require('aws-local-stepfunctions');
const { LambdaClient, InvokeCommand } = require('@aws-sdk/client-lambda');

const { values: flags } = parseArgs({
  options: {
    definition: { type: 'string' },
    'state-machine-arn': { type: 'string' },
    'release-function': { type: 'string' },
    port: { type: 'string', default: '0' },
    region: { type: 'string', default: 'us-east-1' },
  },
});
for (const name of ['definition', 'state-machine-arn', 'release-function']) {
  if (!flags[name]) {
    console.error(`shim: --${name} is required`);
    process.exit(2);
  }
}

const region = flags.region;
const stateMachineArn = flags['state-machine-arn'];
// Local stand-ins accept any credentials; the SDK insists on having some.
const credentials = { accessKeyId: 'local', secretAccessKey: 'local' };
const definition = JSON.parse(fs.readFileSync(flags.definition, 'utf8'));
const machine = new StateMachine(definition, { awsConfig: { region, credentials: { accessKeys: credentials } } });
const lambda = new LambdaClient({ region, credentials });

// Executions by ARN. Each: {arn, name, input, status, startDate, stopDate,
// output, error, cause, events, run}. Kept for the life of the process, as
// Step Functions keeps them for 90 days.
const executions = new Map();

class APIError extends Error {
  constructor(type, message) {
    super(message);
    this.type = type;
  }
}

const seconds = (ms) => ms / 1000;

function startExecution(req) {
  if (req.stateMachineArn !== stateMachineArn) {
    throw new APIError('StateMachineDoesNotExist', `State Machine Does Not Exist: '${req.stateMachineArn}'`);
  }
  const name = req.name;
  if (typeof name !== 'string' || !/^[A-Za-z0-9_-]{1,80}$/.test(name)) {
    throw new APIError('InvalidName', `Invalid Name: '${name}'`);
  }
  const input = req.input ?? '{}';
  let parsed;
  try {
    parsed = JSON.parse(input);
  } catch (e) {
    throw new APIError('InvalidExecutionInput', `Invalid State Machine Execution Input: '${e.message}'`);
  }
  const arn = stateMachineArn.replace(':stateMachine:', ':execution:') + ':' + name;
  const existing = executions.get(arn);
  if (existing) {
    // Step Functions: the same name and input of a running execution is the
    // same call; a closed execution or another input is refused.
    if (existing.status === 'RUNNING' && existing.input === input) {
      return { executionArn: arn, startDate: seconds(existing.startDate) };
    }
    throw new APIError('ExecutionAlreadyExists', `Execution Already Exists: '${arn}'`);
  }
  const exec = { arn, name, input, status: 'RUNNING', startDate: Date.now(), events: [] };
  executions.set(arn, exec);
  exec.run = machine.run(parsed, {
    context: {
      Execution: { Id: arn, Name: name, RoleArn: 'arn:aws:iam::000000000000:role/slipway-local' },
      StateMachine: { Id: stateMachineArn, Name: stateMachineArn.split(':').pop() },
    },
  });
  exec.drained = collectEvents(exec);
  exec.run.result.then(
    (output) => finish(exec, 'SUCCEEDED', () => ({ output: JSON.stringify(output) })),
    (err) => {
      if (err instanceof ExecutionAbortedError) return finish(exec, 'ABORTED', () => ({}));
      if (err instanceof ExecutionTimeoutError) return finish(exec, 'TIMED_OUT', () => ({}));
      return finish(exec, 'FAILED', () => {
        const failed = exec.events.find((e) => e.type === 'ExecutionFailed');
        return failed?.executionFailedEventDetails ?? { error: 'States.Runtime', cause: String(err?.message ?? err) };
      });
    },
  );
  return { executionArn: arn, startDate: seconds(exec.startDate) };
}

// collectEvents turns the engine's event log into Step Functions history
// events, with the types and details AWS uses.
async function collectEvents(exec) {
  for await (const ev of exec.run.eventLogs) {
    const out = { timestamp: seconds(ev.timestamp) };
    const stateType = ev.state?.type;
    switch (ev.type) {
      case 'ExecutionStarted':
        out.type = 'ExecutionStarted';
        out.executionStartedEventDetails = { input: JSON.stringify(ev.input), roleArn: 'arn:aws:iam::000000000000:role/slipway-local' };
        break;
      case 'ExecutionSucceeded':
        out.type = 'ExecutionSucceeded';
        out.executionSucceededEventDetails = { output: JSON.stringify(ev.output) };
        break;
      case 'ExecutionFailed':
        out.type = 'ExecutionFailed';
        out.executionFailedEventDetails = { error: ev.Error, cause: causeString(ev.Cause) };
        break;
      case 'ExecutionAborted':
        out.type = 'ExecutionAborted';
        out.executionAbortedEventDetails = {};
        break;
      case 'ExecutionTimeout':
        out.type = 'ExecutionTimedOut';
        out.executionTimedOutEventDetails = {};
        break;
      case 'StateEntered':
        out.type = `${stateType}StateEntered`;
        out.stateEnteredEventDetails = { name: ev.state.name, input: JSON.stringify(ev.state.input) };
        break;
      case 'StateExited':
        out.type = `${stateType}StateExited`;
        out.stateExitedEventDetails = { name: ev.state.name, output: JSON.stringify(ev.state.output ?? null) };
        break;
      case 'StateFailed':
        if (stateType !== 'Task') continue;
        out.type = 'LambdaFunctionFailed';
        out.lambdaFunctionFailedEventDetails = { error: ev.Error, cause: causeString(ev.Cause) };
        break;
      default:
        continue; // retries and catches have no event of their own on AWS
    }
    out.id = exec.events.length + 1;
    out.previousEventId = exec.events.length;
    exec.events.push(out);
  }
}

function causeString(cause) {
  if (cause === undefined || cause === null) return '';
  if (typeof cause === 'string') return cause;
  if (cause instanceof Error) return cause.message;
  return JSON.stringify(cause);
}

// finish closes the execution once its event log has drained, so that its
// history is whole when it reads as closed; details() reads that history.
async function finish(exec, status, details) {
  await exec.drained;
  if (exec.status !== 'RUNNING') return;
  Object.assign(exec, { status, stopDate: Date.now() }, details());
  if (status === 'SUCCEEDED') return;
  releaseAfter(exec).catch((err) => console.error(`shim: release after ${status} of ${exec.name}: ${err.message}`));
}

// releaseAfter invokes the release function with EventBridge's event for
// the execution's end, retrying as EventBridge does (here: 5 times).
async function releaseAfter(exec) {
  const event = {
    version: '0',
    id: `${exec.name}-${exec.stopDate}`,
    'detail-type': 'Step Functions Execution Status Change',
    source: 'aws.states',
    account: '000000000000',
    time: new Date(exec.stopDate).toISOString(),
    region,
    resources: [exec.arn],
    detail: {
      executionArn: exec.arn,
      stateMachineArn,
      name: exec.name,
      status: exec.status,
      startDate: exec.startDate,
      stopDate: exec.stopDate,
      input: exec.input,
      output: null,
      error: exec.error ?? null,
      cause: exec.cause ?? null,
    },
  };
  const payload = new TextEncoder().encode(JSON.stringify(event));
  let lastErr;
  for (let attempt = 0; attempt < 5; attempt++) {
    try {
      await lambda.send(new InvokeCommand({ FunctionName: flags['release-function'], InvocationType: 'Event', Payload: payload }));
      return;
    } catch (err) {
      lastErr = err;
      await new Promise((resolve) => setTimeout(resolve, 200 * 2 ** attempt));
    }
  }
  throw lastErr;
}

function execution(arn) {
  const exec = executions.get(arn);
  if (!exec) throw new APIError('ExecutionDoesNotExist', `Execution Does Not Exist: '${arn}'`);
  return exec;
}

function describe(exec) {
  const out = {
    executionArn: exec.arn, stateMachineArn, name: exec.name, status: exec.status,
    startDate: seconds(exec.startDate), input: exec.input,
  };
  if (exec.stopDate) out.stopDate = seconds(exec.stopDate);
  if (exec.output !== undefined) out.output = exec.output;
  if (exec.error !== undefined) out.error = exec.error;
  if (exec.cause !== undefined) out.cause = exec.cause;
  return out;
}

const actions = {
  StartExecution: startExecution,
  DescribeExecution: (req) => describe(execution(req.executionArn)),
  StopExecution: (req) => {
    const exec = execution(req.executionArn);
    if (exec.status === 'RUNNING') {
      exec.error = req.error;
      exec.cause = req.cause;
      exec.run.abort();
    }
    return { stopDate: seconds(exec.stopDate ?? Date.now()) };
  },
  GetExecutionHistory: (req) => {
    const exec = execution(req.executionArn);
    let events = exec.events.slice();
    if (req.reverseOrder) events.reverse();
    const start = req.nextToken ? Number(req.nextToken) : 0;
    const size = req.maxResults > 0 ? req.maxResults : 1000;
    const page = events.slice(start, start + size);
    const out = { events: page };
    if (start + size < events.length) out.nextToken = String(start + size);
    return out;
  },
  ListExecutions: (req) => ({
    executions: [...executions.values()]
      .filter((e) => !req.statusFilter || e.status === req.statusFilter)
      .map((e) => {
        const d = describe(e);
        return { executionArn: d.executionArn, stateMachineArn, name: d.name, status: d.status, startDate: d.startDate, stopDate: d.stopDate };
      }),
  }),
};

const server = http.createServer((req, res) => {
  const chunks = [];
  req.on('data', (c) => chunks.push(c));
  req.on('end', () => {
    const reply = (status, body) => {
      const data = JSON.stringify(body);
      res.writeHead(status, { 'Content-Type': 'application/x-amz-json-1.0', 'Content-Length': Buffer.byteLength(data) });
      res.end(data);
    };
    try {
      const target = req.headers['x-amz-target'] ?? '';
      const action = actions[target.replace(/^AWSStepFunctions\./, '')];
      if (req.method !== 'POST' || !target.startsWith('AWSStepFunctions.') || !action) {
        throw new APIError('UnknownOperationException', `unknown operation ${target}`);
      }
      const body = chunks.length ? JSON.parse(Buffer.concat(chunks).toString('utf8')) : {};
      reply(200, action(body));
    } catch (err) {
      if (err instanceof APIError) return reply(400, { __type: err.type, message: err.message });
      if (err instanceof SyntaxError) return reply(400, { __type: 'SerializationException', message: err.message });
      console.error(`shim: ${err.stack}`);
      reply(500, { __type: 'InternalFailure', message: String(err.message) });
    }
  });
});
server.keepAliveTimeout = 60_000;
server.listen(Number(flags.port), '127.0.0.1', () => {
  console.log(`listening on 127.0.0.1:${server.address().port}`);
});
process.on('SIGTERM', () => process.exit(0));
process.on('SIGINT', () => process.exit(0));
