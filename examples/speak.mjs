// Speak text and wait until it has been spoken.
//   node examples/speak.mjs "Hello there."        (Node 22+)
//   node --experimental-websocket examples/speak.mjs "Hello there."   (Node 20/21)
// Exits 0 once the job has finished; 1 with the server's message on error, 3 if aborted.
import { connect, fail, TERMINAL } from "./lib/ttsd.mjs";

const text = process.argv.slice(2).join(" ");
if (!text.trim()) fail("usage: speak.mjs TEXT...", 2);

const tts = await connect();
try {
  const { job } = await tts.request({ type: "speak", text });
  const end = await tts.waitFor((e) => e.job === job && TERMINAL.has(e.type));
  if (end.type === "aborted") fail(`job ${job} was aborted (${end.reason})`, 3);
  if (end.type === "error") fail(`job ${job} failed: ${end.code}: ${end.message}`);
  process.exit(0);
} catch (error) {
  fail(error.message);
}
