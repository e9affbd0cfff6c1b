// Ask the daemon to shut down; exit 0 once it has closed the connection cleanly.
//   node examples/terminate.mjs   (Node 20/21: node --experimental-websocket examples/terminate.mjs)
import { connect, fail } from "./lib/ttsd.mjs";

const tts = await connect();
try {
  const reply = await tts.request({ type: "terminate" });
  console.log(`daemon shutting down; aborted jobs: ${JSON.stringify(reply.aborted)}`);
} catch (error) {
  fail(error.message);
}
const close = await tts.closed;
if (!close.wasClean) fail(`the connection did not close cleanly (code ${close.code})`);
process.exit(0);
