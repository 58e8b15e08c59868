// A TARS guest function in JavaScript: an ES module exporting `handle`, built into a WebAssembly
// component of the `tars:guest` `function` world (guests/wit/tars.wit) by componentize-js.
//
// Input: {"name": "...", "lang": "en" | "fr" | "de"}. Output: a greeting and, when the function's
// TarsModel allows `clock.now`, the host's time (asked through `call`).
import { call } from "tars:guest/host@0.1.0";

// The top level runs once, at build time, and is snapshotted into the component.
const GREETINGS = { en: "hello", fr: "bonjour", de: "hallo" };

// JSON text in, JSON text out; a thrown error becomes the function's error result.
export function handle(inputJson) {
  const input = JSON.parse(inputJson);
  if (typeof input.name !== "string") {
    throw new Error('input needs a "name" string');
  }
  let clock;
  try {
    clock = JSON.parse(call("clock.now", "{}"));
  } catch (refused) {
    // A capability the TarsModel does not list comes back as an error: report it, do not fail.
    clock = { refused: String(refused.payload ?? refused) };
  }
  const greeting = GREETINGS[input.lang ?? "en"] ?? GREETINGS.en;
  return JSON.stringify({ language: "javascript", greeting: `${greeting}, ${input.name}`, clock });
}
