"""``c2c generate``: ask a receiver service one question; print the answer or the JSON reply."""

from __future__ import annotations

import sys
from enum import Enum
from typing import Annotated

import grpc
import typer
from google.protobuf.json_format import MessageToJson

from c2c.service_config import CodecChoice
from protos import c2c_pb2, c2c_pb2_grpc


class ModeChoice(str, Enum):
    """Receiver modes as the command line names them."""

    c2c = "c2c"
    receiver = "receiver"
    text = "text"

    @property
    def wire(self) -> int:
        return {
            "c2c": c2c_pb2.MODE_C2C,
            "receiver": c2c_pb2.MODE_RECEIVER_ONLY,
            "text": c2c_pb2.MODE_TEXT,
        }[self.value]


def generate_command(
    prompt: Annotated[str, typer.Argument(help="The prompt, sent as is (or as a user message).")],
    receiver: Annotated[
        str, typer.Option(envvar="C2C_RECEIVER", help="Receiver service address, HOST:PORT.")
    ] = "localhost:50052",
    mode: Annotated[ModeChoice, typer.Option(help="Who answers.")] = ModeChoice.c2c,
    codec: Annotated[
        CodecChoice | None, typer.Option(help="KV layout on the wire (default: the server's).")
    ] = None,
    chat: Annotated[
        bool, typer.Option(help="Send the prompt as a user message (chat template).")
    ] = False,
    max_new_tokens: Annotated[
        int, typer.Option(help="Tokens to generate; 0 = the server's default.")
    ] = 0,
    temperature: Annotated[float, typer.Option(help="0 = greedy.")] = 0.0,
    top_p: Annotated[float, typer.Option(help="Nucleus sampling mass in (0, 1].")] = 1.0,
    seed: Annotated[int, typer.Option(help="Sampling seed.")] = 0,
    stop: Annotated[
        list[str] | None, typer.Option(help="Stop before this string (repeatable).")
    ] = None,
    allow_fallback: Annotated[
        bool, typer.Option(help="Answer receiver-only if the sharer fails.")
    ] = True,
    timeout: Annotated[float, typer.Option(help="Deadline in seconds.")] = 120.0,
    json_output: Annotated[
        bool, typer.Option("--json", help="Print the GenerateReply as JSON (.proto names).")
    ] = False,
) -> None:
    """Ask a receiver service one question; streams the answer as it is decoded."""
    request = c2c_pb2.GenerateRequest(
        max_new_tokens=max_new_tokens,
        mode=mode.wire,
        allow_fallback=allow_fallback,
        temperature=temperature,
        top_p=top_p,
        seed=seed,
        codec=codec.wire if codec is not None else c2c_pb2.CODEC_UNSPECIFIED,
        stop=stop or [],
    )
    if chat:
        request.messages.messages.add(role="user", content=prompt)
    else:
        request.prompt = prompt
    with grpc.insecure_channel(receiver) as channel:
        stub = c2c_pb2_grpc.ReceiverStub(channel)
        try:
            reply = None
            for event in stub.GenerateStream(request, timeout=timeout):
                if event.HasField("reply"):
                    reply = event.reply
                elif not json_output:
                    sys.stdout.write(event.delta.text)
                    sys.stdout.flush()
        except grpc.RpcError as error:
            typer.echo(f"error: {error.code().name}: {error.details()}", err=True)
            raise typer.Exit(1) from None
    if reply is None:
        typer.echo("error: the stream ended without a reply", err=True)
        raise typer.Exit(1)
    if json_output:
        typer.echo(
            MessageToJson(
                reply, preserving_proto_field_name=True, always_print_fields_with_no_presence=True
            )
        )
        return
    typer.echo("")
    if reply.fallback_reason:
        typer.echo(f"(answered receiver-only: {reply.fallback_reason})", err=True)
