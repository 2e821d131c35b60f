// A Node.js client of the chat service: the client is generated from
// proto/chat.proto when it starts (@grpc/proto-loader), and calls every RPC
// the way an application would: New, Send (and a retry of the same
// client_id, which must return the same message), History paged backwards,
// and Connect with since-seq, resumed after a disconnect without a gap or a
// duplicate. Prints what it saw as JSON; exits 1 on the first surprise.
//
//   npm install && node client.js 127.0.0.1:50051
import { fileURLToPath } from "node:url";
import grpc from "@grpc/grpc-js";
import protoLoader from "@grpc/proto-loader";

const address = process.argv[2] ?? "127.0.0.1:50051";
const protoPath = fileURLToPath(new URL("../../proto/chat.proto", import.meta.url));
const definition = protoLoader.loadSync(protoPath, {
  keepCase: true, // field names as in the proto: chat_id, not chatId
  longs: String, // seq and sent_at are 64-bit: strings, not lossy numbers
  defaults: true,
});
const { chat } = grpc.loadPackageDefinition(definition);
const client = new chat.Chat(address, grpc.credentials.createInsecure());

// Unary calls as promises.
const call = (method, request) =>
  new Promise((resolve, reject) =>
    client[method](request, (err, response) => (err ? reject(err) : resolve(response))),
  );

function check(ok, what) {
  if (!ok) {
    throw new Error(`check failed: ${what}`);
  }
}

// A Connect stream as `user`, from `sinceSeq`; resolves with the first
// `count` messages it receives, then ends the call.
function receive(chatId, user, sinceSeq, count, onOpen = () => {}) {
  const metadata = new grpc.Metadata();
  metadata.set("chat-id", chatId);
  metadata.set("user-id", user);
  if (sinceSeq !== undefined) {
    metadata.set("since-seq", String(sinceSeq));
  }
  const stream = client.Connect(metadata);
  const got = [];
  return new Promise((resolve, reject) => {
    stream.on("data", (msg) => {
      got.push(msg);
      if (got.length === count) {
        stream.cancel();
        resolve(got);
      }
    });
    stream.on("error", (err) => {
      if (err.code !== grpc.status.CANCELLED) reject(err);
    });
    stream.on("metadata", () => onOpen());
  });
}

async function main() {
  const { chat_id } = await call("New", { user_ids: ["ann", "bob"] });
  const again = await call("New", { user_ids: ["bob", "ann"] });
  check(again.chat_id === chat_id, "New is idempotent on the set of users");

  // Send, then retry the same client_id (as after a timeout): one message.
  const send = (client_id, text) =>
    call("Send", { chat_id, user_id: "ann", client_id, text }).then((r) => r.message);
  const first = await send("node-1", "hello from node");
  const retry = await send("node-1", "hello from node");
  check(first.seq === "1", `the first message has seq 1 (got ${first.seq})`);
  check(retry.id === first.id && retry.seq === first.seq, "a retry returns the stored message");
  for (let i = 2; i <= 5; i++) {
    await send(`node-${i}`, `message ${i}`);
  }

  // History, newest page first, then older pages with before_seq.
  const pages = [];
  let before;
  for (;;) {
    const request = { chat_id, limit: 2 };
    if (before !== undefined) request.before_seq = before;
    const page = await call("History", request);
    pages.unshift(...page.messages);
    if (!page.has_more) break;
    before = page.messages[0].seq;
  }
  const seqs = pages.map((m) => Number(m.seq));
  check(JSON.stringify(seqs) === "[1,2,3,4,5]", `History pages give seq 1..5 (got ${seqs})`);

  // bob follows the chat from the start: the 5 stored, then one sent live.
  const live = receive(chat_id, "bob", 0, 6, () =>
    send("node-6", "live").catch((err) => console.error(`live send: ${err.message}`)),
  );
  const streamed = await live;
  check(
    streamed.map((m) => m.seq).join() === "1,2,3,4,5,6",
    `Connect from since-seq 0 delivers 1..6 once, in order (got ${streamed.map((m) => m.seq)})`,
  );
  check(streamed[5].text === "live", "the live message arrives on the stream");

  // Reconnect as if the connection had dropped after seq 4.
  await send("node-7", "while bob was away");
  const resumed = await receive(chat_id, "bob", 4, 3);
  check(
    resumed.map((m) => m.seq).join() === "5,6,7",
    `since-seq 4 resumes with 5, 6, 7 (got ${resumed.map((m) => m.seq)})`,
  );

  // A refused request: a stable error id in the message and the gRPC code.
  try {
    await call("Send", { chat_id, user_id: "ann", client_id: "node-x" });
    check(false, "a Send without text is refused");
  } catch (err) {
    check(err.code === grpc.status.INVALID_ARGUMENT, `INVALID_ARGUMENT (got ${err.code})`);
    check(err.details.startsWith("chat.Send.MissingText"), `the error id (got ${err.details})`);
  }

  console.log(
    JSON.stringify({
      chat_id,
      sent: 7,
      history_seqs: seqs,
      streamed: streamed.map((m) => m.seq),
      resumed: resumed.map((m) => m.seq),
    }),
  );
}

main()
  .then(() => client.close())
  .catch((err) => {
    console.error(err.message ?? err);
    client.close();
    process.exit(1);
  });
