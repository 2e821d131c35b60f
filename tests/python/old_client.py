"""An old client: stubs generated from the original public contract
(proto/compat/original.proto: no seq, no events, History without paging),
against a chat that has edits and deletions. It must see exactly what it
always saw: the messages, each once, as they are now, and nothing else.

Usage: python3 tests/python/old_client.py HOST:PORT CHAT_ID EXPECTED_TEXTS_JSON
Exits non-zero (with a traceback) on any difference.
"""
import json
import os
import queue
import sys
import tempfile
import threading

import grpc
from grpc_tools import protoc

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def generate():
    out = tempfile.mkdtemp(prefix="chat-old-py-")
    args = ["protoc", f"-I{ROOT}/proto/compat", f"--python_out={out}", f"--grpc_python_out={out}", "original.proto"]
    if protoc.main(args) != 0:
        raise SystemExit("grpc_tools.protoc failed on proto/compat/original.proto")
    sys.path.insert(0, out)
    import original_pb2
    import original_pb2_grpc
    return original_pb2, original_pb2_grpc


def main(addr, chat_id, expected):
    pb, pb_grpc = generate()
    stub = pb_grpc.ChatStub(grpc.insecure_channel(addr))
    page = stub.History(pb.HistoryRequest(chat_id=chat_id))
    texts = [m.text for m in page.messages]
    assert texts == expected, (texts, expected)
    # Unknown fields (seq, kind, edited_at) are there to ignore, never a new message.
    assert all(m.user_id and m.text for m in page.messages), page

    # Connect: a new message arrives alone, with no event before or after it.
    outbox = queue.Queue()

    def requests():
        while True:
            item = outbox.get()
            if item is None:
                return
            yield item

    stream = stub.Connect(requests(), metadata=(("chat-id", chat_id), ("user-id", "ann")))
    got = []
    reader = threading.Thread(target=lambda: got.extend(stream), daemon=True)
    reader.start()
    outbox.put(pb.Message(client_id="old-1", text="from an old client"))
    outbox.put(None)  # half-close: the server ends the call once everything is delivered
    reader.join(timeout=20)
    assert not reader.is_alive(), "the stream did not end after the half-close"
    assert [m.text for m in got] == ["from an old client"], [(m.text, m.user_id) for m in got]
    print("old client ok:", texts)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], json.loads(sys.argv[3]))
