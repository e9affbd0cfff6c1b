// Plays ttsd's streamed synthesis in a web page: a `synthesize` request with
// `"stream": true`, then every binary frame is scheduled with Web Audio as it arrives.
//
// Frames (docs/protocol.md, "Streamed audio"): `audio_start` (JSON: job, sample_rate),
// binary frames (4-byte little-endian job id, then mono s16le PCM), `audio_end` (JSON:
// outcome, samples). Each piece becomes an AudioBuffer at the engine's rate (the
// browser resamples it to the output's) and starts exactly where the previous one
// ends, so the pieces join without gaps.

/** Schedules PCM pieces back to back on an AudioContext. */
export class PiecePlayer {
  constructor(context) {
    this.context = context;
    this.next = 0; // context time at which the next piece starts
    this.scheduled = 0; // pieces scheduled
    this.samples = 0; // samples scheduled
    this.ended = 0; // pieces that finished playing
    this.sources = [];
  }

  /** Schedule one piece of s16le PCM (an ArrayBuffer) at `rate` Hz. */
  play(pcm, rate) {
    const ints = new Int16Array(pcm);
    if (ints.length === 0) return;
    const buffer = this.context.createBuffer(1, ints.length, rate);
    const channel = buffer.getChannelData(0);
    for (let i = 0; i < ints.length; i++) channel[i] = ints[i] / 32768;
    const source = this.context.createBufferSource();
    source.buffer = buffer;
    source.connect(this.context.destination);
    // A little lead on the first piece; later ones follow the previous one exactly,
    // unless the stream fell behind the clock (then they start as soon as possible).
    this.next = Math.max(this.next, this.context.currentTime + 0.05);
    source.onended = () => { this.ended += 1; };
    source.start(this.next);
    this.next += buffer.duration;
    this.scheduled += 1;
    this.samples += ints.length;
    this.sources.push(source);
  }

  /** Stop everything scheduled. */
  stop() {
    for (const source of this.sources) source.stop();
    this.sources = [];
  }
}

/**
 * Speak `text` through the daemon at `url` (ws://host:port). Resolves when the stream
 * ends with {outcome, job, sampleRate, frames, samples, scheduled, contextState}; calls
 * `onProgress(info)` after each frame. `context` is an AudioContext (create it in a
 * click handler: browsers start audio only after a user gesture).
 */
export function speak(url, text, context, { onProgress = () => {}, options } = {}) {
  return new Promise((resolve, reject) => {
    const socket = new WebSocket(url);
    socket.binaryType = "arraybuffer";
    const player = new PiecePlayer(context);
    const info = { job: null, sampleRate: 0, frames: 0, samples: 0, outcome: null };
    const report = () => ({
      ...info,
      scheduled: player.scheduled,
      scheduledSamples: player.samples,
      contextState: context.state,
      player,
    });
    socket.onopen = () => {
      const request = { type: "synthesize", id: "page", text, stream: true };
      if (options) request.options = options;
      socket.send(JSON.stringify(request));
    };
    socket.onmessage = (event) => {
      if (typeof event.data !== "string") {
        const job = new DataView(event.data).getUint32(0, true);
        if (job !== info.job) return; // another stream of this connection
        info.frames += 1;
        info.samples += (event.data.byteLength - 4) / 2;
        player.play(event.data.slice(4), info.sampleRate);
        onProgress(report());
        return;
      }
      const message = JSON.parse(event.data);
      if (message.id !== "page") return; // hello and events of other clients' jobs
      if (message.type === "audio_start") {
        info.job = message.job;
        info.sampleRate = message.sample_rate;
      } else if (message.type === "audio_end") {
        info.outcome = message.outcome;
        info.announcedSamples = message.samples;
        socket.close();
        resolve(report());
      } else if (message.type === "error") {
        socket.close();
        reject(new Error(`${message.code}: ${message.message}`));
      }
    };
    socket.onclose = (event) => {
      if (info.outcome === null) reject(new Error(`connection closed (${event.code})`));
    };
  });
}
