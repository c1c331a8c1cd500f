"""smsgw.v1.AuthService and smsgw.v1.AuditService: parse, call the auth service, convert."""

from __future__ import annotations

from typing import Any

import grpc
from smsgw.v1 import audit_pb2, audit_pb2_grpc, auth_pb2, auth_pb2_grpc

from gateway.api.convert import timestamp
from gateway.api.cursors import decode_id_token, encode_id_token
from gateway.api.interceptors import current_caller, metadata_value
from gateway.auth.records import TokenPair
from gateway.auth.service import AuthService
from gateway.errors import InvalidArgument, Unauthenticated

__all__ = ["AuthServicer", "AuditServicer"]

Context = grpc.aio.ServicerContext[Any, Any]
_PAGE_DEFAULT, _PAGE_MAX = 50, 500


def _pair_to_pb(pair: TokenPair) -> auth_pb2.TokenPair:
    return auth_pb2.TokenPair(
        access_token=pair.access_token,
        refresh_token=pair.refresh_token,
        token_type="Bearer",
        access_expires_at=timestamp(pair.access.expires_at),
        refresh_expires_at=timestamp(pair.refresh.expires_at),
        access_jti=pair.access.jti,
        refresh_jti=pair.refresh.jti,
        scopes=sorted(pair.access.scopes),
    )


class AuthServicer(auth_pb2_grpc.AuthServiceServicer):
    def __init__(self, service: AuthService) -> None:
        self.service = service

    async def CreateAccount(self, request: auth_pb2.CreateAccountRequest, context: Context) -> auth_pb2.Account:
        account = await self.service.create_account(request.username, request.password, current_caller().source)
        return auth_pb2.Account(
            id=account.id, username=account.username, scopes=sorted(account.scopes), created_at=timestamp(account.created_at)
        )

    async def IssueToken(self, request: auth_pb2.IssueTokenRequest, context: Context) -> auth_pb2.TokenPair:
        scheme, _, basic = metadata_value(context, "authorization").partition(" ")
        if scheme.lower() != "basic" or not basic.strip():
            raise Unauthenticated("IssueToken needs 'authorization: Basic base64(username:password)' metadata")
        pair = await self.service.issue(
            basic.strip(), list(request.scopes), request.access_ttl_seconds, request.refresh_ttl_seconds,
            current_caller().source,
        )
        return _pair_to_pb(pair)

    async def RefreshToken(self, request: auth_pb2.RefreshTokenRequest, context: Context) -> auth_pb2.TokenPair:
        if not request.refresh_token:
            raise InvalidArgument("refresh_token", "required")
        return _pair_to_pb(await self.service.refresh(request.refresh_token, current_caller().source))

    async def RevokeToken(self, request: auth_pb2.RevokeTokenRequest, context: Context) -> auth_pb2.RevokeTokenResponse:
        return auth_pb2.RevokeTokenResponse(revoked=await self.service.revoke(current_caller(), request.jti))


class AuditServicer(audit_pb2_grpc.AuditServiceServicer):
    def __init__(self, service: AuthService) -> None:
        self.service = service

    async def ListAuditEvents(
        self, request: audit_pb2.ListAuditEventsRequest, context: Context
    ) -> audit_pb2.ListAuditEventsResponse:
        if request.page_size > _PAGE_MAX:
            raise InvalidArgument("page_size", f"at most {_PAGE_MAX}")
        before_id = decode_id_token(request.page_token) if request.page_token else None
        limit = request.page_size or _PAGE_DEFAULT
        records = await self.service.list_audit(current_caller().owner_id, request.action, limit, before_id)
        token = encode_id_token(records[-1].id) if len(records) == limit else ""
        return audit_pb2.ListAuditEventsResponse(
            events=[
                audit_pb2.AuditEvent(
                    id=r.id, time=timestamp(r.time), action=r.action, actor=r.actor, source=r.source, detail=r.detail
                )
                for r in records
            ],
            next_page_token=token,
        )
