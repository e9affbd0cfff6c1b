// An agent reading a long report is interrupted by an urgent message; the report then
// resumes from the start of the sentence it was in.
//   node examples/agent-notify.mjs                     (Node 22+)
//   node --experimental-websocket examples/agent-notify.mjs   (Node 20/21)
// Prints the events as they come; exits 0 once both have finished.
import { connect, fail, TERMINAL } from "./lib/ttsd.mjs";

const REPORT =
  "Here is the summary of the nightly build. All four hundred tests passed on the first try. " +
  "The documentation was rebuilt and published. Two dependencies have newer releases. " +
  "Nothing else needs your attention today.";
const URGENT = "Excuse me: the deploy to production just failed.";

const tts = await connect();
try {
  await tts.request({ type: "identify", name: "agent-notify" });
  tts.onEvent((event) => {
    if (event.client !== "agent-notify") return;
    const detail = event.type === "sentence" ? ` ${event.index}` :
      event.type === "postponed" ? ` by job ${event.by}, will resume at sentence ${event.index}` :
      event.type === "continued" ? ` from sentence ${event.index}` : "";
    console.log(`job ${event.job}: ${event.type}${detail}`);
  });
  const report = await tts.request({ type: "speak", text: REPORT });
  // Interrupt once the report is into its second sentence.
  await tts.waitFor((e) => e.job === report.job && e.type === "sentence" && e.index >= 1);
  const urgent = await tts.request({ type: "speak", text: URGENT, priority: "important", resume: true });
  for (const job of [urgent.job, report.job]) {
    const end = await tts.waitFor((e) => e.job === job && TERMINAL.has(e.type));
    if (end.type !== "finished") fail(`job ${job} ${end.type}: ${end.reason ?? end.message}`, 3);
  }
  process.exit(0);
} catch (error) {
  fail(error.message);
}
