"""Interop: a Python grpcio client, generated from proto/chat.proto at run
time, drives New / Send / History / Connect against a running server.

Usage: python3 tests/python/interop.py HOST:PORT
Exits non-zero (with a traceback) on any failure, including missing grpcio.
"""
import os
import queue
import sys
import tempfile
import threading
import uuid

import grpc
from grpc_tools import protoc

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def generate():
    out = tempfile.mkdtemp(prefix="chat-py-")
    args = ["protoc", f"-I{ROOT}/proto", f"--python_out={out}", f"--grpc_python_out={out}", "chat.proto"]
    if protoc.main(args) != 0:
        raise SystemExit("grpc_tools.protoc failed on proto/chat.proto")
    sys.path.insert(0, out)
    import chat_pb2
    import chat_pb2_grpc
    return chat_pb2, chat_pb2_grpc


def expect_error(call, code, error_id):
    try:
        call()
    except grpc.RpcError as e:
        assert e.code() == code, (e.code(), e.details())
        assert e.details().startswith(error_id + ": "), e.details()
        return
    raise AssertionError(f"expected {code} {error_id}")


def main(addr):
    pb, pb_grpc = generate()
    channel = grpc.insecure_channel(addr)
    stub = pb_grpc.ChatStub(channel)

    chat_id = stub.New(pb.NewRequest(user_ids=["py-bob", "py-ann", "py-ann"])).chat_id
    assert stub.New(pb.NewRequest(user_ids=["py-ann", "py-bob"])).chat_id == chat_id

    sent = stub.Send(pb.SendRequest(client_id="k1", chat_id=chat_id, user_id="py-ann", subject="s", text="hello from python"))
    assert sent.message.seq == 1 and sent.message.text == "hello from python", sent
    again = stub.Send(pb.SendRequest(client_id="k1", chat_id=chat_id, user_id="py-ann", subject="s", text="hello from python"))
    assert again.message == sent.message, "an idempotent retry returns the stored message"
    stub.Send(pb.SendRequest(client_id="k2", chat_id=chat_id, user_id="py-bob", text="hi ann"))

    page = stub.History(pb.HistoryRequest(chat_id=chat_id))
    assert [m.seq for m in page.messages] == [1, 2] and not page.has_more, page
    # Field presence: after_seq=0 is "from the start", distinct from unset.
    page = stub.History(pb.HistoryRequest(chat_id=chat_id, limit=1, after_seq=0))
    assert [m.seq for m in page.messages] == [1] and page.has_more, page
    page = stub.History(pb.HistoryRequest(chat_id=chat_id, limit=1))
    assert [m.seq for m in page.messages] == [2] and page.has_more, page

    expect_error(lambda: stub.Send(pb.SendRequest(chat_id=chat_id, user_id="py-ann")),
                 grpc.StatusCode.INVALID_ARGUMENT, "chat.Send.MissingText")
    expect_error(lambda: stub.Send(pb.SendRequest(chat_id=chat_id, user_id="py-eve", text="x")),
                 grpc.StatusCode.PERMISSION_DENIED, "chat.Send.NotAMember")
    expect_error(lambda: stub.History(pb.HistoryRequest(chat_id=str(uuid.uuid4()))),
                 grpc.StatusCode.NOT_FOUND, "chat.History.InvalidChatID")

    # Connect: replay from since-seq 1, send on the stream, get the echo, then
    # a Send from elsewhere arrives live.
    outbox = queue.Queue()

    def requests():
        while True:
            item = outbox.get()
            if item is None:
                return
            yield item

    stream = stub.Connect(requests(), metadata=(("chat-id", chat_id), ("user-id", "py-bob"), ("since-seq", "1")))
    received = []
    first = next(stream)
    received.append(first)
    assert first.seq == 2 and first.text == "hi ann", first
    outbox.put(pb.Message(client_id="k3", text="sent on the stream"))
    echo = next(stream)
    assert (echo.seq, echo.client_id, echo.user_id) == (3, "k3", "py-bob"), echo
    threading.Thread(target=lambda: stub.Send(pb.SendRequest(client_id="k4", chat_id=chat_id, user_id="py-ann", text="live"))).start()
    live = next(stream)
    assert (live.seq, live.text) == (4, "live"), live
    outbox.put(None)  # half-close: the server ends the call once caught up
    assert list(stream) == []

    expect_error(lambda: next(stub.Connect(iter(()), metadata=(("user-id", "py-bob"),))),
                 grpc.StatusCode.INVALID_ARGUMENT, "chat.Connect.MissingChatID")
    print("python interop: ok")


if __name__ == "__main__":
    main(sys.argv[1])
