// One SIP.js (0.21) phone over a secure WebSocket (RFC 7118), run as a subprocess by
// tests/test_sip_wss_sipjs.py: the browser SIP stack, in Node, with `ws` as its WebSocket.
//
// No browser and no WebRTC: a SessionDescriptionHandlerFactory of our own (SIP.js's documented
// extension point for media) offers and answers a fixed audio SDP (port 9, discard) and sends
// no media, so INVITE / 200 / ACK / BYE run as SIP.js would run them in a browser.
//
// Like tests/pjsua_phone.py, it reports one JSON object per line on stdout, each with `event`
// and `t` (CLOCK_MONOTONIC seconds, the clock of Python's time.monotonic()):
//
//   device  registered {code, contact, expires}   register_failed {code, reason}
//           unregistered: the registration ended without our asking
//           incoming {call_id, from, to}   ringing / answered / rejected {call_id[, code]}
//           confirmed {call_id}: the ACK of our 2xx arrived
//           cancelled {call_id}: the caller gave up before we answered
//   caller  calling {call_id}   progress {code, call_id}   confirmed {code, call_id}: 2xx, ACK sent
//           result {code, confirmed}: the first final answer to the INVITE
//   both    bye_received {call_id}: a BYE came (and was answered 200)
//           hanging_up {call_id}: we send a BYE   bye_answered {call_id, code}: its answer
//           disconnected {call_id, confirmed, by}: the session is over (by: "remote" or
//             "local"; SIP.js ends a session as its BYE goes out, before the answer)
//           rx {line, call_id, cseq, to_tag}: every SIP message received on the WebSocket
//           transport {state}: the WebSocket connected, or went away
//           error {message}   exit {why}: the very last line
//
// Usage (the cluster runs with --sip-auth off, so nobody authenticates):
//
//   node phone.mjs device --server wss://127.0.0.1:PORT --user bob --domain example.com \
//       [--answer-after MS (default 0) | --ring-forever | --reject CODE] [--hangup-after MS]
//   node phone.mjs call sip:bob@example.com --server wss://127.0.0.1:PORT --user alice \
//       --domain example.com [--hangup-after MS]
//   common: [--ca FILE] [--lifetime S (60)] [--expires S (300)] [--instance UUID]
//           [--log-file FILE] [--ignore-stdin]
//
// --ca: the PEM CA certificates the server's is checked against, instead of Node's own (without
// it, NODE_EXTRA_CA_CERTS=FILE adds to those). --hangup-after: MS after the call is confirmed,
// send a BYE. --instance: +sip.instance (with reg-id=1, RFC 5626) on the REGISTER's Contact.
// A device exits on SIGTERM or SIGINT, when its stdin closes (unless --ignore-stdin), or after
// --lifetime seconds; a caller when its call is over (or the same). SIP.js's log, every SIP
// message in full (traceSip), goes to --log-file, else to stderr.

import fs from "node:fs";
import { parseArgs } from "node:util";
import WebSocketImpl from "ws";
import {
  Inviter,
  Registerer,
  RegistererState,
  SessionState,
  UserAgent,
} from "sip.js";

const now = () => Number(process.hrtime.bigint()) / 1e9;

function emit(event, fields = {}) {
  process.stdout.write(JSON.stringify({ event, t: now(), ...fields }) + "\n");
}

// ---- arguments ----------------------------------------------------------------------------

const USAGE = "usage: phone.mjs device|call [URI] --server wss://HOST:PORT --user U --domain D ...";

function parse(argv) {
  const { values, positionals } = parseArgs({
    args: argv,
    allowPositionals: true,
    options: {
      server: { type: "string" },
      user: { type: "string" },
      domain: { type: "string" },
      ca: { type: "string" },
      "answer-after": { type: "string" },
      "ring-forever": { type: "boolean", default: false },
      reject: { type: "string" },
      "hangup-after": { type: "string" },
      lifetime: { type: "string", default: "60" },
      expires: { type: "string", default: "300" },
      instance: { type: "string" },
      "log-file": { type: "string" },
      "ignore-stdin": { type: "boolean", default: false },
    },
  });
  const [mode, uri] = positionals;
  if (!["device", "call"].includes(mode) || (mode === "call") !== (uri !== undefined)) {
    throw new Error(USAGE);
  }
  for (const need of ["server", "user", "domain"]) {
    if (!values[need]) throw new Error(`--${need} is required\n${USAGE}`);
  }
  const int = (name) => (values[name] === undefined ? undefined : Number(values[name]));
  const how = ["answer-after", "ring-forever", "reject"].filter(
    (k) => values[k] !== undefined && values[k] !== false,
  );
  if (how.length > 1) throw new Error(`at most one of --${how.join(", --")}`);
  return {
    mode,
    uri,
    server: values.server,
    user: values.user,
    domain: values.domain,
    ca: values.ca,
    answerAfter: values["ring-forever"] || values.reject ? undefined : (int("answer-after") ?? 0),
    reject: int("reject"),
    hangupAfter: int("hangup-after"),
    lifetime: Number(values.lifetime),
    expires: Number(values.expires),
    instance: values.instance,
    logFile: values["log-file"],
    stdinCloses: !values["ignore-stdin"],
  };
}

// ---- the log and the WebSocket ------------------------------------------------------------

let logStream = process.stderr;

function log(level, category, label, content) {
  const stamp = new Date().toISOString();
  logStream.write(`${stamp} ${level} ${category}${label ? ` (${label})` : ""} | ${content}\n`);
}

function header(message, ...names) {
  const wanted = names.map((n) => n.toLowerCase());
  for (const line of message.split(/\r?\n/).slice(1)) {
    if (!line.trim()) break;
    const at = line.indexOf(":");
    if (at > 0 && wanted.includes(line.slice(0, at).trim().toLowerCase())) {
      return line.slice(at + 1).trim();
    }
  }
  return null;
}

function summary(message) {
  const to = header(message, "to", "t") || "";
  const tag = /;\s*tag=([^;>\s]+)/.exec(to);
  return {
    line: message.split(/\r?\n/, 1)[0],
    call_id: header(message, "call-id", "i"),
    cseq: header(message, "cseq"),
    to_tag: tag ? tag[1] : null,
  };
}

// SIP.js calls `new WebSocket(url, "sip")`; Node 20 has no WebSocket of its own. This one is
// `ws`, trusting --ca, and reports every SIP message it receives as an `rx` event.
function installWebSocket(caFile) {
  const ca = caFile ? fs.readFileSync(caFile) : undefined;
  class PhoneWebSocket extends WebSocketImpl {
    constructor(url, protocols) {
      super(url, protocols, ca ? { ca } : {});
      this.on("message", (data, isBinary) => {
        const text = data.toString("utf8");
        if (!isBinary && /^(\r\n)+$/.test(text)) return; // a keepalive pong
        emit("rx", summary(text));
      });
    }
  }
  globalThis.WebSocket = PhoneWebSocket;
}

// ---- media: none ----------------------------------------------------------------------------

let sdpVersion = 0;

// An offer lists PCMU, PCMA and telephone-event; an answer PCMU alone (a caller that gets
// several codecs in an answer may re-INVITE to settle on one: pjsua does).
function fixedSdp(answer) {
  sdpVersion += 1;
  const formats = answer
    ? ["0 PCMU/8000"]
    : ["0 PCMU/8000", "8 PCMA/8000", "101 telephone-event/8000"];
  return [
    "v=0",
    `o=- ${process.pid} ${sdpVersion} IN IP4 127.0.0.1`,
    "s=swimthor wsphone",
    "c=IN IP4 127.0.0.1",
    "t=0 0",
    `m=audio 9 RTP/AVP ${formats.map((f) => f.split(" ")[0]).join(" ")}`,
    ...formats.map((f) => `a=rtpmap:${f}`),
    "a=sendrecv",
    "",
  ].join("\r\n");
}

// The SessionDescriptionHandler SIP.js asks for every offer and answer: always the same audio
// m-line, whatever the other side offered (nothing is ever sent to it). An offer received
// (setDescription) makes the next description an answer.
class FixedSdpHandler {
  constructor() {
    this.offerSent = false; // ours, waiting for its answer
    this.offerReceived = false; // theirs, waiting for our answer
  }
  close() {}
  getDescription() {
    const answer = this.offerReceived;
    this.offerReceived = false;
    this.offerSent = !answer;
    return Promise.resolve({ body: fixedSdp(answer), contentType: "application/sdp" });
  }
  hasDescription(contentType) {
    return contentType === "application/sdp";
  }
  setDescription() {
    this.offerReceived = !this.offerSent;
    this.offerSent = false;
    return Promise.resolve();
  }
  rollbackDescription() {
    return Promise.resolve();
  }
  sendDtmf() {
    return false;
  }
}

const fixedSdpFactory = () => new FixedSdpHandler();

// ---- the phone ----------------------------------------------------------------------------

class Phone {
  constructor(args) {
    this.args = args;
    this.stopping = false;
    this.sessions = new Set();
    this.calls = new Map(); // session -> {hangUp, byeAnswered}
    const uri = UserAgent.makeURI(`sip:${args.user}@${args.domain}`);
    if (!uri) throw new Error(`not a SIP URI: sip:${args.user}@${args.domain}`);
    this.ua = new UserAgent({
      uri,
      transportOptions: { server: args.server, traceSip: true, connectionTimeout: 10 },
      sessionDescriptionHandlerFactory: fixedSdpFactory,
      logBuiltinEnabled: false,
      logConnector: log,
      logLevel: "debug",
      userAgentString: "SIP.js-swimthor-tests",
      instanceId: args.instance,
      delegate: {
        onInvite: (invitation) => this.onInvite(invitation),
        onDisconnect: (error) => {
          emit("transport", { state: "disconnected", error: error ? String(error) : null });
        },
        onConnect: () => emit("transport", { state: "connected" }),
      },
    });
  }

  async start() {
    await this.ua.start();
  }

  // A session of ours (incoming or outgoing): its BYE, its end.
  watch(session, callId) {
    this.sessions.add(session);
    let confirmed = false;
    let byLocal = false;
    session.delegate = {
      ...session.delegate,
      onBye: (bye) => {
        emit("bye_received", { call_id: callId });
        bye.accept();
      },
    };
    session.stateChange.addListener((state) => {
      if (state === SessionState.Established) {
        confirmed = true;
        this.onEstablished(session, callId);
      } else if (state === SessionState.Terminating) {
        byLocal = true;
      } else if (state === SessionState.Terminated) {
        this.sessions.delete(session);
        emit("disconnected", { call_id: callId, confirmed, by: byLocal ? "local" : "remote" });
        this.onTerminated(session, callId, confirmed);
      }
    });
    const call = {
      byeAnswered: Promise.resolve(null),
      hangUp: () => {
        if (session.state !== SessionState.Established) return;
        emit("hanging_up", { call_id: callId });
        byLocal = true;
        call.byeAnswered = this.bye(session, callId);
      },
    };
    this.calls.set(session, call);
    return call;
  }

  // Our BYE; resolves with the code of its final answer (null: none within 5 s). SIP.js ends
  // the session as the BYE goes out, not when it is answered.
  bye(session, callId) {
    return new Promise((resolve) => {
      const answered = (response) => {
        const code = response.message.statusCode;
        emit("bye_answered", { call_id: callId, code });
        resolve(code);
      };
      setTimeout(() => resolve(null), 5000);
      session
        .bye({ requestDelegate: { onAccept: answered, onReject: answered } })
        .catch((e) => {
          emit("error", { message: `BYE: ${e}` });
          resolve(null);
        });
    });
  }

  onInvite(invitation) {
    invitation.reject({ statusCode: 486 });
  }
  onEstablished() {}
  onTerminated() {}

  // Hang up what is still up, un-REGISTER (SIP.js's graceful stop), bounded in time.
  async stop(why) {
    if (this.stopping) return;
    this.stopping = true;
    for (const session of this.sessions) {
      const call = this.calls.get(session);
      if (call) call.hangUp();
    }
    await Promise.all([...this.calls.values()].map((c) => c.byeAnswered));
    await Promise.race([this.ua.stop().catch(() => {}), sleep(2000)]);
    logStream.write(`exit: ${why}\n`);
    emit("exit", { why });
    process.exit(0);
  }
}

class Device extends Phone {
  constructor(args) {
    super(args);
    this.registered = false;
    const options = { expires: args.expires };
    if (args.instance) options.instanceId = args.instance; // SIP.js adds reg-id=1 with it
    this.registerer = new Registerer(this.ua, options);
  }

  async start() {
    try {
      await super.start();
    } catch (e) {
      emit("register_failed", { code: 0, reason: `WebSocket: ${e.message ?? e}` });
      throw e;
    }
    this.registerer.stateChange.addListener((state) => {
      if (state === RegistererState.Unregistered && this.registered && !this.stopping) {
        emit("unregistered", {});
      }
    });
    await this.registerer.register({
      requestDelegate: {
        onAccept: (response) => {
          const message = response.message;
          this.registered = true;
          emit("registered", {
            code: message.statusCode,
            contact: message.getHeader("contact") ?? null,
            expires: Number(message.getHeader("expires") ?? this.args.expires),
          });
        },
        onReject: (response) => {
          emit("register_failed", {
            code: response.message.statusCode,
            reason: response.message.reasonPhrase,
          });
        },
      },
    });
  }

  onInvite(invitation) {
    const callId = invitation.request.callId;
    emit("incoming", {
      call_id: callId,
      from: invitation.remoteIdentity.uri.toString(),
      to: invitation.localIdentity.uri.toString(),
    });
    const call = this.watch(invitation, callId);
    let confirmed = false;
    invitation.delegate = {
      ...invitation.delegate,
      onAck: () => {
        if (confirmed) return; // the ACK of a re-INVITE's 2xx
        confirmed = true;
        emit("confirmed", { call_id: callId });
        if (this.args.hangupAfter !== undefined) setTimeout(call.hangUp, this.args.hangupAfter);
      },
      onCancel: () => emit("cancelled", { call_id: callId }),
    };
    if (this.args.reject !== undefined) {
      invitation
        .reject({ statusCode: this.args.reject })
        .then(() => emit("rejected", { call_id: callId, code: this.args.reject }))
        .catch((e) => emit("error", { message: `reject: ${e}` }));
      return;
    }
    invitation
      .progress({ statusCode: 180 })
      .then(() => emit("ringing", { call_id: callId }))
      .catch((e) => emit("error", { message: `180: ${e}` }));
    if (this.args.answerAfter !== undefined) {
      setTimeout(() => {
        if (invitation.state !== SessionState.Initial) return; // cancelled meanwhile
        invitation
          .accept()
          .then(() => emit("answered", { call_id: callId }))
          .catch((e) => emit("error", { message: `accept: ${e}` }));
      }, this.args.answerAfter);
    }
  }
}

class Caller extends Phone {
  async start() {
    await super.start();
    const target = UserAgent.makeURI(this.args.uri);
    if (!target) throw new Error(`not a SIP URI: ${this.args.uri}`);
    const inviter = new Inviter(this.ua, target);
    const callId = inviter.request.callId;
    this.call = this.watch(inviter, callId);
    this.callId = callId;
    this.final = undefined;
    emit("calling", { call_id: callId });
    await inviter.invite({
      requestDelegate: {
        onProgress: (response) => {
          emit("progress", { code: response.message.statusCode, call_id: callId });
        },
        onAccept: (response) => {
          this.final ??= response.message.statusCode;
          emit("confirmed", { code: response.message.statusCode, call_id: callId });
        },
        onReject: (response) => {
          this.final ??= response.message.statusCode;
        },
      },
    });
  }

  onEstablished() {
    if (this.args.hangupAfter !== undefined) setTimeout(this.call.hangUp, this.args.hangupAfter);
  }

  async onTerminated(session, callId, confirmed) {
    await this.call.byeAnswered; // our BYE's answer, if we sent one
    emit("result", { code: this.final ?? null, confirmed });
    this.stop("call over");
  }
}

function sleep(ms) {
  return new Promise((resolve) => setTimeout(resolve, ms));
}

// ---- main ---------------------------------------------------------------------------------

let args;
try {
  args = parse(process.argv.slice(2));
} catch (e) {
  process.stderr.write(`${e.message}\n`);
  process.exit(2);
}
if (args.logFile) logStream = fs.createWriteStream(args.logFile, { flags: "a" });
installWebSocket(args.ca);

const phone = args.mode === "device" ? new Device(args) : new Caller(args);
for (const signal of ["SIGTERM", "SIGINT"]) process.on(signal, () => phone.stop(signal));
setTimeout(() => phone.stop("lifetime"), args.lifetime * 1000);
if (args.stdinCloses) {
  process.stdin.on("data", () => {}); // what the test writes is ignored
  process.stdin.on("end", () => phone.stop("stdin closed"));
  process.stdin.on("error", () => phone.stop("stdin closed"));
}
phone.start().catch((e) => {
  emit("error", { message: String(e && e.stack ? e.stack : e) });
  phone.stop("failed");
});
