"""The Sharer gRPC methods: convert at the boundary, delegate to SharerPrefill."""

from __future__ import annotations

from collections.abc import Iterator

import grpc

from c2c import __version__
from c2c.model_loading import card_to_proto
from protos import c2c_pb2, c2c_pb2_grpc
from sharer_service.prefill import SharerPrefill
from sharer_service.request_validation import prefill_plan, text_plan


class SharerServicer(c2c_pb2_grpc.SharerServicer):
    def __init__(self, prefill: SharerPrefill) -> None:
        self.prefill = prefill

    def Describe(
        self, request: c2c_pb2.DescribeRequest, context: grpc.ServicerContext
    ) -> c2c_pb2.ModelCard:
        return card_to_proto(
            self.prefill.loaded.card, self.prefill.limits.max_prompt_tokens, __version__
        )

    def Prefill(
        self, request: c2c_pb2.PrefillRequest, context: grpc.ServicerContext
    ) -> Iterator[c2c_pb2.KVMessage]:
        plan = prefill_plan(request, self.prefill.limits, self.prefill.loaded.card.num_layers)
        yield from self.prefill.stream(
            plan, is_cancelled=lambda: not context.is_active(), after_rpc=context.add_callback
        )

    def GenerateText(
        self, request: c2c_pb2.GenerateTextRequest, context: grpc.ServicerContext
    ) -> c2c_pb2.GenerateTextReply:
        plan = text_plan(request, self.prefill.limits)
        result, prompt_tokens = self.prefill.generate_text(
            plan, is_cancelled=lambda: not context.is_active()
        )
        return c2c_pb2.GenerateTextReply(
            text=result.text,
            token_ids=result.token_ids,
            prompt_tokens=prompt_tokens,
            total_ms=result.decode_ms,
        )
