// Speak a long passage, abort it 3 seconds after it starts, print every event seen.
//   node examples/abort-demo.mjs   (Node 20/21: node --experimental-websocket examples/abort-demo.mjs)
// Exits 0 once the job has been aborted.
import { connect, fail, TERMINAL } from "./lib/ttsd.mjs";

const PASSAGE = `It was a bright cold day in April, and the clocks were striking thirteen.
The hallway smelt of boiled cabbage and old rag mats. At one end of it a coloured poster,
too large for indoor display, had been tacked to the wall. It depicted simply an enormous
face, more than a metre wide: the face of a man of about forty-five, with a heavy black
moustache and ruggedly handsome features. Outside, even through the shut window-pane, the
world looked cold. Down in the street little eddies of wind were whirling dust and torn
paper into spirals, and though the sun was shining and the sky a harsh blue, there seemed
to be no colour in anything, except the posters that were plastered everywhere.`;

const tts = await connect();
tts.onEvent((event) => console.log(JSON.stringify(event)));
try {
  const queued = await tts.request({ type: "speak", text: PASSAGE });
  console.log(JSON.stringify(queued));
  const { job } = queued;
  const first = await tts.waitFor((e) => e.job === job && (e.type === "started" || TERMINAL.has(e.type)));
  if (first.type !== "started") fail(`job ${job} ended before it started: ${JSON.stringify(first)}`);
  await new Promise((resolve) => setTimeout(resolve, 3000));
  console.log(JSON.stringify(await tts.request({ type: "abort_current" })));
  const end = await tts.waitFor((e) => e.job === job && TERMINAL.has(e.type));
  if (end.type !== "aborted") fail(`job ${job} ended with ${end.type}, not aborted`);
  process.exit(0);
} catch (error) {
  fail(error.message);
}
