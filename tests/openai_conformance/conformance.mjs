// Drives a Foreshore gateway with the official `openai` npm client and exits
// non-zero on anything the client rejects or the gateway gets wrong.
//
//   FORESHORE_URL=http://127.0.0.1:8080/v1 FORESHORE_MODELS=edge,cloud node conformance.mjs
//
// FORESHORE_MODELS: comma-separated model names to run the checks on (default:
// every model the gateway lists). FORESHORE_API_KEY: the client key, if any.
// FORESHORE_TOOLS_MODEL: a model whose tier makes tool calls; the client's
// tool-call parsing (whole and streamed) is checked on it.
import OpenAI from 'openai';

const baseURL = process.env.FORESHORE_URL;
if (!baseURL) {
  console.error('set FORESHORE_URL to the gateway base URL, e.g. http://127.0.0.1:8080/v1');
  process.exit(2);
}
const client = new OpenAI({
  baseURL,
  apiKey: process.env.FORESHORE_API_KEY || 'no-key',
  maxRetries: 0,
  timeout: 60_000,
});

let failures = 0;
function check(condition, what) {
  if (!condition) {
    failures++;
    console.error(`FAIL ${what}`);
  }
}

async function step(name, fn) {
  try {
    await fn();
    console.log(`ok   ${name}`);
  } catch (err) {
    failures++;
    console.error(`FAIL ${name}: ${err?.stack ?? err}`);
  }
}

const messages = [{ role: 'user', content: 'Once upon a time' }];
let models = [];

await step('models.list', async () => {
  for await (const model of client.models.list()) {
    check(typeof model.id === 'string' && model.id.length > 0, `model id: ${JSON.stringify(model)}`);
    check(model.object === 'model', `model object: ${JSON.stringify(model)}`);
    models.push(model.id);
  }
  check(models.length > 0, 'the gateway lists at least one model');
});

const wanted = process.env.FORESHORE_MODELS
  ? process.env.FORESHORE_MODELS.split(',').filter(Boolean)
  : models;

for (const model of wanted) {
  check(models.includes(model), `${model} is listed by /v1/models`);

  await step(`models.retrieve (${model})`, async () => {
    const one = await client.models.retrieve(model);
    check(one.id === model && one.object === 'model', `retrieved: ${JSON.stringify(one)}`);
  });

  await step(`chat.completions.create (${model})`, async () => {
    const { data, response } = await client.chat.completions
      .create({ model, messages, max_tokens: 16, temperature: 0, seed: 1 })
      .withResponse();
    check(data.object === 'chat.completion', `object: ${data.object}`);
    check(typeof data.id === 'string', 'id is a string');
    const choice = data.choices[0];
    check(choice?.message?.role === 'assistant', 'assistant message');
    check(typeof choice?.message?.content === 'string' && choice.message.content.length > 0,
          'non-empty content');
    check(['stop', 'length'].includes(choice?.finish_reason), `finish_reason: ${choice?.finish_reason}`);
    check(data.usage?.completion_tokens > 0, 'usage.completion_tokens > 0');
    check(data.usage?.total_tokens === data.usage?.prompt_tokens + data.usage?.completion_tokens,
          'usage.total_tokens adds up');
    const tier = response.headers.get('x-foreshore-tier');
    check(!!tier, 'x-foreshore-tier header');
    check(!!response.headers.get('x-foreshore-decision-id'), 'x-foreshore-decision-id header');
    check(data.foreshore?.tier === tier, 'body foreshore.tier matches the header');
  });

  await step(`chat.completions.create stream + include_usage (${model})`, async () => {
    const stream = await client.chat.completions.create({
      model, messages, max_tokens: 16, temperature: 0, stream: true,
      stream_options: { include_usage: true },
    });
    let text = '';
    let finish = null;
    let usage = null;
    let chunks = 0;
    for await (const chunk of stream) {
      chunks++;
      check(chunk.object === 'chat.completion.chunk', `chunk object: ${chunk.object}`);
      for (const choice of chunk.choices) {
        text += choice.delta?.content ?? '';
        if (choice.finish_reason) finish = choice.finish_reason;
      }
      if (chunk.usage) usage = chunk.usage;
    }
    check(chunks >= 3, `several chunks (got ${chunks})`);
    check(text.length > 0, 'streamed text');
    check(['stop', 'length'].includes(finish), `finish_reason: ${finish}`);
    check(usage?.completion_tokens > 0, 'usage chunk with completion_tokens');
  });

  await step(`completions.create (${model})`, async () => {
    const data = await client.completions.create({ model, prompt: 'Once upon', max_tokens: 8 });
    check(data.object === 'text_completion', `object: ${data.object}`);
    check(typeof data.choices[0]?.text === 'string', 'choice text');
  });
}

await step('unknown model is a 404 NotFoundError', async () => {
  try {
    await client.chat.completions.create({ model: 'no-such-model', messages });
    check(false, 'the request should have failed');
  } catch (err) {
    check(err instanceof OpenAI.NotFoundError, `NotFoundError, got ${err?.constructor?.name}: ${err}`);
    check(err.status === 404, `status 404, got ${err.status}`);
    check(err.code === 'model_not_found', `code model_not_found, got ${err.code}`);
    check(err.param === 'model', `param model, got ${err.param}`);
    check(typeof err.message === 'string' && err.message.includes('no-such-model'), 'message names the model');
  }
});

if (wanted.includes('edge')) {
  // The embedded engine makes one completion; n > 1 needs a cloud tier.
  await step('n=2 on the edge is a 400 BadRequestError naming n', async () => {
    try {
      await client.chat.completions.create({ model: 'edge', messages, n: 2 });
      check(false, 'the request should have failed');
    } catch (err) {
      check(err instanceof OpenAI.BadRequestError, `BadRequestError, got ${err?.constructor?.name}: ${err}`);
      check(err.param === 'n', `param n, got ${err.param}`);
    }
  });
}

const toolsModel = process.env.FORESHORE_TOOLS_MODEL;
if (toolsModel) {
  const tools = [{
    type: 'function',
    function: {
      name: 'get_weather',
      description: 'The weather in a city',
      parameters: { type: 'object', properties: { text: { type: 'string' } } },
    },
  }];
  const ask = [{ role: 'user', content: 'weather in Oslo' }];

  await step(`tool call, whole (${toolsModel})`, async () => {
    const data = await client.chat.completions.create({ model: toolsModel, messages: ask, tools });
    const choice = data.choices[0];
    check(choice?.finish_reason === 'tool_calls', `finish_reason: ${choice?.finish_reason}`);
    const call = choice?.message?.tool_calls?.[0];
    check(call?.type === 'function' && call?.function?.name === 'get_weather',
          `tool call: ${JSON.stringify(choice?.message)}`);
    check(JSON.parse(call?.function?.arguments ?? '{}').text === 'weather in Oslo',
          `arguments: ${call?.function?.arguments}`);
  });

  await step(`tool call, streamed and joined by the client (${toolsModel})`, async () => {
    const stream = client.chat.completions.stream({ model: toolsModel, messages: ask, tools });
    const done = await stream.finalChatCompletion();
    const call = done.choices[0]?.message?.tool_calls?.[0];
    check(done.choices[0]?.finish_reason === 'tool_calls', `finish_reason: ${done.choices[0]?.finish_reason}`);
    check(call?.function?.name === 'get_weather', `tool call: ${JSON.stringify(done.choices[0])}`);
    check(call?.function?.arguments === '{"text":"weather in Oslo"}', `arguments: ${call?.function?.arguments}`);
    check(typeof call?.id === 'string' && call.id.length > 0, 'call id');
  });

  await step(`n=2, whole and streamed (${toolsModel})`, async () => {
    const ask = [{ role: 'user', content: 'name a colour' }];
    const data = await client.chat.completions.create({ model: toolsModel, messages: ask, n: 2 });
    check(data.choices.length === 2, `two choices: ${JSON.stringify(data.choices)}`);
    check(data.choices[1]?.index === 1 && data.choices[1]?.message?.content === '(choice 1) echo: name a colour',
          `second choice: ${JSON.stringify(data.choices[1])}`);
    const stream = client.chat.completions.stream({ model: toolsModel, messages: ask, n: 2 });
    const done = await stream.finalChatCompletion();
    check(done.choices.length === 2, `two streamed choices: ${JSON.stringify(done.choices)}`);
    check(done.choices[0]?.message?.content === 'echo: name a colour',
          `first streamed choice: ${JSON.stringify(done.choices[0])}`);
    check(done.choices[1]?.message?.content === '(choice 1) echo: name a colour',
          `second streamed choice: ${JSON.stringify(done.choices[1])}`);
    check(done.choices.every((c) => c.finish_reason === 'stop'), 'every choice finished');
  });

  await step(`tool result sent back (${toolsModel})`, async () => {
    const data = await client.chat.completions.create({
      model: toolsModel,
      tools,
      tool_choice: 'none',
      messages: [
        ...ask,
        { role: 'assistant', content: null, tool_calls: [{ id: 'call_1', type: 'function',
          function: { name: 'get_weather', arguments: '{"text":"Oslo"}' } }] },
        { role: 'tool', tool_call_id: 'call_1', content: 'rain' },
        { role: 'user', content: 'so take an umbrella' },
      ],
    });
    check(data.choices[0]?.message?.content === 'echo: so take an umbrella',
          `answer: ${JSON.stringify(data.choices[0]?.message)}`);
  });
}

if (failures > 0) {
  console.error(`${failures} conformance problem(s)`);
  process.exit(1);
}
console.log('openai client conformance: all checks passed');
