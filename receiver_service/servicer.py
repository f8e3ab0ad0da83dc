"""The Receiver gRPC methods: validate and convert at the boundary, delegate to the pipeline."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import grpc

from c2c import __version__
from c2c.model_loading import card_to_proto
from protos import c2c_pb2
from receiver_service.pipeline import Outcome, ReceiverPipeline
from receiver_service.request_validation import (
    MODE_VALUES,
    input_fields_on_wire,
    validate_generate_request,
)

SERVICE_NAME = c2c_pb2.DESCRIPTOR.services_by_name["Receiver"].full_name


@dataclass(frozen=True)
class ParsedGenerateRequest:
    """A GenerateRequest and whether its bytes carried both ``prompt`` and ``messages``."""

    message: c2c_pb2.GenerateRequest
    both_inputs: bool


def parse_generate_request(serialized: bytes) -> ParsedGenerateRequest:
    return ParsedGenerateRequest(
        message=c2c_pb2.GenerateRequest.FromString(serialized),
        both_inputs=len(input_fields_on_wire(serialized)) > 1,
    )


def _time_remaining(context: grpc.ServicerContext):
    def remaining() -> float | None:
        seconds = context.time_remaining()
        return None if seconds is None or seconds > 1e8 else seconds

    return remaining


def reply_from(outcome: Outcome) -> c2c_pb2.GenerateReply:
    timings = outcome.timings
    generation = outcome.generation
    return c2c_pb2.GenerateReply(
        text=generation.text,
        token_ids=generation.token_ids,
        mode_used=MODE_VALUES[outcome.mode_used],
        fallback_reason=outcome.fallback_reason,
        trace_id=outcome.trace_id,
        timings=c2c_pb2.Timings(
            receiver_prefill=timings.receiver_prefill,
            sharer_prefill=timings.sharer_prefill,
            transfer=timings.transfer,
            fusion=timings.fusion,
            decode=timings.decode,
            total=timings.total,
            transfer_blocked=timings.transfer_blocked,
            time_to_first_token=timings.time_to_first_token,
        ),
        bytes_on_wire=outcome.bytes_on_wire,
        prompt_tokens=outcome.prompt_tokens,
        finish_reason=generation.finish_reason,
        codec_used=outcome.codec_used,
        fused_layers=outcome.fused_layers,
        sharer_layers=outcome.sharer_layers,
    )


class ReceiverServicer:
    """Describe, Generate and GenerateStream of c2c.v1.Receiver."""

    def __init__(self, pipeline: ReceiverPipeline) -> None:
        self.pipeline = pipeline

    def Describe(
        self, request: c2c_pb2.DescribeRequest, context: grpc.ServicerContext
    ) -> c2c_pb2.ReceiverCard:
        pipeline = self.pipeline
        limits = pipeline.settings.limits
        readiness = pipeline.readiness
        return c2c_pb2.ReceiverCard(
            receiver=card_to_proto(pipeline.receiver.card, limits.max_prompt_tokens, __version__),
            sharer=readiness.sharer_card,
            fuser_fingerprint=pipeline.fuser_fingerprint,
            c2c_ready=readiness.ready,
            c2c_unready_reason=readiness.reason,
            default_codec=limits.default_codec,
            max_new_tokens_limit=limits.max_new_tokens,
        )

    def _run(self, parsed: ParsedGenerateRequest, context: grpc.ServicerContext, outcome: Outcome):
        request = validate_generate_request(
            parsed.message, self.pipeline.settings.limits, both_inputs=parsed.both_inputs
        )
        return self.pipeline.generate(
            request,
            outcome,
            is_cancelled=lambda: not context.is_active(),
            time_remaining=_time_remaining(context),
            after_rpc=context.add_callback,
        )

    def Generate(
        self, parsed: ParsedGenerateRequest, context: grpc.ServicerContext
    ) -> c2c_pb2.GenerateReply:
        outcome = Outcome()
        for _ in self._run(parsed, context, outcome):
            pass
        return reply_from(outcome)

    def GenerateStream(
        self, parsed: ParsedGenerateRequest, context: grpc.ServicerContext
    ) -> Iterator[c2c_pb2.GenerateEvent]:
        outcome = Outcome()
        for delta in self._run(parsed, context, outcome):
            yield c2c_pb2.GenerateEvent(
                delta=c2c_pb2.TextDelta(text=delta.text, token_ids=delta.token_ids)
            )
        yield c2c_pb2.GenerateEvent(reply=reply_from(outcome))


def add_receiver_servicer(servicer: ReceiverServicer, server: grpc.Server) -> str:
    """Register the servicer; Generate requests are parsed by ``parse_generate_request``."""
    handlers = {
        "Describe": grpc.unary_unary_rpc_method_handler(
            servicer.Describe,
            request_deserializer=c2c_pb2.DescribeRequest.FromString,
            response_serializer=c2c_pb2.ReceiverCard.SerializeToString,
        ),
        "Generate": grpc.unary_unary_rpc_method_handler(
            servicer.Generate,
            request_deserializer=parse_generate_request,
            response_serializer=c2c_pb2.GenerateReply.SerializeToString,
        ),
        "GenerateStream": grpc.unary_stream_rpc_method_handler(
            servicer.GenerateStream,
            request_deserializer=parse_generate_request,
            response_serializer=c2c_pb2.GenerateEvent.SerializeToString,
        ),
    }
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE_NAME, handlers),))
    return SERVICE_NAME
