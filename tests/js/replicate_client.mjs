// Replicate's official JavaScript client (npm `replicate`) against a live diffusion-queue stack;
// run by tests/test_replicate.py: node replicate_client.mjs <modules dir> <base URL> <key> <out dir>.
// Prints one JSON line with what it saw; writes the images it downloaded to <out dir>.
import { createRequire } from "node:module";
import { writeFileSync } from "node:fs";
import { join } from "node:path";

const [modules, baseUrl, auth, outDir] = process.argv.slice(2);
const Replicate = createRequire(join(modules, "package.json"))("replicate");
const replicate = new Replicate({ auth, baseUrl: `${baseUrl}/v1` });
const seen = {};

async function save(files, prefix) {
  const names = [];
  for (const [n, file] of files.entries()) {
    const blob = await file.blob(); // FileOutput: fetched with no key, so the URL must be signed
    const name = join(outDir, `${prefix}-${n}`);
    writeFileSync(name, Buffer.from(await blob.arrayBuffer()));
    names.push(name);
  }
  return names;
}

// 1. run by model: POST /v1/models/dq/tiny-sd/predictions with Prefer: wait
const output = await replicate.run("dq/tiny-sd", { input: { prompt: "a pig", num_inference_steps: 2, num_outputs: 2 } });
seen.run_types = output.map((o) => o.constructor.name);
seen.run_urls = output.map((o) => o.url().href);
seen.run_files = await save(output, "run");

// 2. the model and its version; run by version: POST /v1/predictions
const model = await replicate.models.get("dq", "tiny-sd");
const version = await replicate.models.versions.get("dq", "tiny-sd", model.latest_version.id);
seen.version_inputs = Object.keys(version.openapi_schema.components.schemas.Input.properties);
const byVersion = await replicate.run(`dq/tiny-sd:${version.id}`, {
  input: { prompt: "a cow", num_inference_steps: 2, output_format: "webp" },
});
seen.version_files = await save(byVersion, "version");

// 3. create, wait (polls urls.get), get, list, cancel
let prediction = await replicate.predictions.create({ model: "dq/tiny-sd", input: { prompt: "a hen" } });
seen.created_status = prediction.status;
prediction = await replicate.wait(prediction, { interval: 50 });
seen.waited_status = prediction.status;
seen.predict_time = prediction.metrics.predict_time;
seen.got_status = (await replicate.predictions.get(prediction.id)).status;
seen.listed = (await replicate.predictions.list()).results.map((p) => p.id);
seen.waited_id = prediction.id;
seen.canceled_status = (await replicate.predictions.cancel(prediction.id)).status;

// 4. errors are problems: an unknown model
try {
  await replicate.run("dq/no-such-model", { input: { prompt: "a pig" } });
  seen.missing = "no error";
} catch (error) {
  seen.missing = error.response ? error.response.status : String(error);
}
console.log(JSON.stringify(seen));
