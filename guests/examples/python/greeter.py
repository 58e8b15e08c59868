# A TARS guest function in Python: `handle(input)` over JSON values, built into a WebAssembly component
# of the `tars:guest` `function` world by componentize-py, on the node.
#
# Input: {"name": "...", "lang": "en" | "fr" | "de"}. Output: a greeting and, when the function's
# TarsModel allows `clock.now`, the host's time (asked through `call_tool`).

# The top level runs once, at build time, and is snapshotted into the component.
GREETINGS = {"en": "hello", "fr": "bonjour", "de": "hallo"}


def handle(input):
    if not isinstance(input.get("name"), str):
        raise ValueError('input needs a "name" string')  # an exception becomes the function's error result
    try:
        clock = call_tool("clock.now")  # noqa: F821 - the host provides it
    except Exception as refused:
        # A capability the TarsModel does not list comes back as an error: report it, do not fail.
        clock = {"refused": str(getattr(refused, "value", refused))}
    greeting = GREETINGS.get(input.get("lang", "en"), GREETINGS["en"])
    return {"language": "python", "greeting": f"{greeting}, {input['name']}", "clock": clock}
