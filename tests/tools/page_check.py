"""Open a node's live page in headless Chromium and watch it through the DevTools protocol, as a person would.

    python3 page_check.py CHROMIUM DEBUG_PORT PROFILE_DIR URL NODES

Prints `READY` once the page shows NODES reachable nodes and its change list is connected, then reads one line
on stdin, `INSERTED <table> <key as JSON>`, written right after the test committed that row, and prints
`APPEARED <ms>` when a change of that row shows in the list (or `MISSING` after 10 s). Last, `ERRORS <JSON
list>`: every console error and uncaught exception the page had. Exits 2 when the page never got ready.
"""

import json
import subprocess
import sys
import time
import urllib.request

import websocket

chromium, port, profile, url, nodes = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4], int(sys.argv[5])
browser = subprocess.Popen(
    [chromium, "--headless=new", "--no-sandbox", "--disable-gpu", "--no-first-run",
     "--remote-debugging-port=%d" % port, "--user-data-dir=" + profile, "about:blank"],
    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def finish(code):
    browser.kill()
    browser.wait()
    sys.exit(code)


deadline = time.time() + 60
target = None
while time.time() < deadline and target is None:
    try:
        pages = json.load(urllib.request.urlopen("http://127.0.0.1:%d/json/list" % port, timeout=2))
        target = next((p for p in pages if p.get("type") == "page"), None)
    except OSError:
        time.sleep(0.2)
if target is None:
    print("NO-BROWSER", flush=True)
    finish(2)

ws = websocket.create_connection(target["webSocketDebuggerUrl"], timeout=10)
ids = iter(range(1, 1 << 30))
errors = []


def on_event(m):
    method, params = m.get("method"), m.get("params", {})
    if method == "Runtime.exceptionThrown":
        errors.append(params["exceptionDetails"].get("text", "exception") + ": " +
                      str(params["exceptionDetails"].get("exception", {}).get("description", "")))
    elif method == "Runtime.consoleAPICalled" and params.get("type") in ("error", "assert"):
        errors.append("console.%s: %s" % (params["type"], [a.get("value", a.get("description")) for a in params.get("args", [])]))
    elif method == "Log.entryAdded" and params["entry"].get("level") == "error":
        errors.append("log: %s %s" % (params["entry"].get("text"), params["entry"].get("url", "")))


def call(method, **params):
    i = next(ids)
    ws.send(json.dumps({"id": i, "method": method, "params": params}))
    while True:
        m = json.loads(ws.recv())
        if m.get("id") == i:
            return m.get("result", {})
        on_event(m)


def evaluate(expr):
    r = call("Runtime.evaluate", expression=expr, returnByValue=True)
    return r.get("result", {}).get("value")


call("Runtime.enable")
call("Log.enable")
call("Page.enable")
call("Page.navigate", url=url)
ready = False
while time.time() < deadline:
    shown = evaluate("document.querySelectorAll('#nodes td.reachable').length")
    connected = evaluate("window.feedConnected === true")
    if shown == nodes and connected:
        ready = True
        break
    time.sleep(0.2)
if not ready:
    print("NOT-READY %s" % evaluate("document.body ? document.body.innerText : ''"), flush=True)
    print("ERRORS " + json.dumps(errors), flush=True)
    finish(2)
print("READY", flush=True)

line = sys.stdin.readline().split(" ", 2)
table, key = line[1], json.loads(line[2])
started = time.time()
found = False
query = "[...document.querySelectorAll('#changes li')].some(li => li.dataset.table === %s && li.dataset.key === %s)" % (
    json.dumps(table), json.dumps(json.dumps(key, separators=(",", ":"))))
while time.time() < started + 10:
    if evaluate(query):
        found = True
        break
    time.sleep(0.05)
print(("APPEARED %d" % ((time.time() - started) * 1000)) if found else "MISSING", flush=True)
# The page keeps polling: a few more seconds for any error it makes.
time.sleep(2)
evaluate("1")
print("ERRORS " + json.dumps(errors), flush=True)
finish(0)
