// Compile schemas/tasks.schema.json with Ajv in strict mode (every strict option on), then
// validate each document of a JSON array read from stdin; print one result per document.
import fs from "node:fs";
import Ajv2020 from "ajv/dist/2020.js";

const schema = JSON.parse(fs.readFileSync(process.argv[2], "utf8"));
const ajv = new Ajv2020({
  strict: true, strictSchema: true, strictNumbers: true, strictTypes: true, strictTuples: true,
  strictRequired: true, allErrors: true,
});
const validate = ajv.compile(schema);
const documents = JSON.parse(fs.readFileSync(0, "utf8"));
const results = documents.map((doc) => {
  const valid = validate(doc);
  return {valid, errors: (validate.errors || []).map((e) => ({
    path: e.instancePath, keyword: e.keyword, message: e.message, params: e.params,
  }))};
});
process.stdout.write(JSON.stringify(results));
