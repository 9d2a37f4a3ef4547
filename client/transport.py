"""Asynchronous inference over gRPC or HTTP, with an optional system-shared-memory fast path.

:class:`Transport` keeps up to ``concurrency`` requests in flight (gRPC: tritonclient's async callbacks;
HTTP: one blocking client per worker thread) and hands back :class:`Pending` handles that complete in any order. With
``shared_memory="system"`` each in-flight slot owns a pair of POSIX shared-memory regions registered with the
server, so the input pixels and the anomaly maps never travel through the socket: it works only when client and
server share a host (``/dev/shm``).

A failed request is classified once, here, where tritonclient's exception is caught: :class:`ServerUnavailable`
(the server is down, restarting or reloading the model: worth a resend) or :class:`RequestRefused` (the server
answered and rejected this input: resending it cannot help). :func:`classify` decides by exception type, gRPC
status code and HTTP status, not by the message text.
"""

from __future__ import annotations

import contextlib
import http.client
import os
import threading
import time
import uuid
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from concurrent.futures import wait as wait_for
from dataclasses import dataclass
from http import HTTPStatus
from typing import Literal

import gevent
import grpc
import numpy as np
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
import tritonclient.utils.shared_memory as shm
from tritonclient.utils import InferenceServerException

from kdcore.contract import MAP, UINT8

Protocol = Literal["grpc", "http"]


# ---------------------------------------------------------------------------------------------- failures
class RequestFailed(Exception):
    """A request that returned no outputs; ``str()`` is the reason as one line, ``cause`` what tritonclient raised."""

    def __init__(self, text: str, cause: BaseException | None = None) -> None:
        super().__init__(text)
        self.cause = cause


class ServerUnavailable(RequestFailed):
    """The server could not answer: down, restarting, too slow, or reloading the model. Worth a resend."""


class RequestRefused(RequestFailed):
    """The server answered and rejected the request (its input, most often). A resend gets the same answer."""


#: gRPC codes of a server that is down or slow. NOT_FOUND names a model or a shared-memory region that existed
#: when the transport started (the scoring client checks the model first and registers the regions itself), so
#: the server has restarted or is reloading the model.
_GRPC_UNAVAILABLE = frozenset({grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED,
                               grpc.StatusCode.NOT_FOUND})
#: The HTTP statuses of the same situations (Triton answers NOT_FOUND as 404, UNAVAILABLE as 503; a proxy in
#: front of it answers 502 or 504 while it is down).
_HTTP_UNAVAILABLE = frozenset({HTTPStatus.NOT_FOUND, HTTPStatus.BAD_GATEWAY, HTTPStatus.SERVICE_UNAVAILABLE,
                               HTTPStatus.GATEWAY_TIMEOUT})
#: Failures below tritonclient: connection refused or reset, socket timeouts (OSError), a reply cut off when the
#: server died mid-answer (geventhttpclient's HTTPConnectionClosed is an http.client.HTTPException), and
#: gevent's own timeout (a BaseException, so listed by name).
_CONNECTION_ERRORS = (OSError, http.client.HTTPException, gevent.Timeout)


def grpc_status(error: InferenceServerException) -> grpc.StatusCode | None:
    """The gRPC status code of a Triton error (tritonclient keeps it as the text ``"StatusCode.NAME"``)."""
    prefix, _, name = (error.status() or "").partition(".")
    return grpc.StatusCode.__members__.get(name) if prefix == "StatusCode" else None


def http_status(error: InferenceServerException) -> HTTPStatus | None:
    """The HTTP status of a Triton error (tritonclient keeps it as the text ``"404"``)."""
    status = error.status() or ""
    try:
        return HTTPStatus(int(status))
    except ValueError:
        return None


def _dead_stub(error: InferenceServerException) -> bool:
    """A Python-backend stub process that died (the supervisor restarts the server or reloads the model).

    The one rule read from the text: Triton reports it as INTERNAL / 500, the code of any model failure, and
    neither the status nor the exception type tells it apart from a model that failed on this input.
    """
    message = error.message() or ""
    return "Stub process" in message and "is not healthy" in message


def error_text(error: BaseException) -> str:
    """A failure as one line: the server's message for a Triton error, else the exception's text."""
    text = error.message() if isinstance(error, InferenceServerException) else str(error)
    text = " ".join(str(text).split())
    return text or type(error).__name__


def classify(error: BaseException) -> RequestFailed:
    """What a failed request means for the caller: :class:`ServerUnavailable` or :class:`RequestRefused`.

    Args:
        error: What tritonclient (or the socket below it) raised for one request to a model that was ready when
            the transport started.
    """
    if isinstance(error, RequestFailed):
        return error
    if isinstance(error, InferenceServerException):
        code, status = grpc_status(error), http_status(error)
        internal = code is grpc.StatusCode.INTERNAL or status is HTTPStatus.INTERNAL_SERVER_ERROR
        if code in _GRPC_UNAVAILABLE or status in _HTTP_UNAVAILABLE or (internal and _dead_stub(error)):
            return ServerUnavailable(error_text(error), error)
        return RequestRefused(error_text(error), error)
    if isinstance(error, _CONNECTION_ERRORS):
        return ServerUnavailable(f"{type(error).__name__}: {error_text(error)}", error)
    # Anything else failed on the client while handling this request: report it for the request's files.
    return RequestRefused(f"{type(error).__name__}: {error_text(error)}", error)


@dataclass
class Reply:
    """One completed request: the requested outputs and when it completed (``time.perf_counter()``)."""

    outputs: dict[str, np.ndarray]
    done_at: float


def connect(protocol: Protocol, url: str, *, concurrency: int = 1, timeout: float = 60.0,
            tls_root: str | None = None):
    """A tritonclient client for ``protocol``; ``tls_root`` (a PEM CA file) turns on TLS for gRPC."""
    if protocol == "grpc":
        if tls_root:
            return grpcclient.InferenceServerClient(url, ssl=True, root_certificates=str(tls_root))
        return grpcclient.InferenceServerClient(url)
    if tls_root:
        raise ValueError("TLS is configured for the gRPC endpoint; use --protocol grpc")
    return httpclient.InferenceServerClient(url, concurrency=concurrency, connection_timeout=timeout,
                                            network_timeout=timeout)


class Pending:
    """A request in flight; :meth:`result` blocks until it completes and raises its classified error if it failed."""

    def __init__(self, future: Future, slot: int, finish, sent_at: float) -> None:
        self._future = future
        self.slot = slot
        self._finish = finish
        self.sent_at = sent_at

    def result(self, timeout: float | None = None) -> Reply:
        """The reply.

        Raises:
            concurrent.futures.TimeoutError: ``timeout`` passed with the request still in flight (ask again).
            ServerUnavailable: The server could not answer it (worth a resend).
            RequestRefused: The server rejected it.
        """
        # Checked apart from the result: an HTTP socket timeout is the same TimeoutError class as this one.
        if not wait_for([self._future], timeout).done:
            raise FutureTimeout
        try:
            raw, done_at = self._future.result()
            return Reply(self._finish(raw, self.slot), done_at)
        except (Exception, gevent.Timeout) as e:  # noqa: BLE001  (every failure is classified for the caller)
            raise classify(e) from e


class _Slot:
    """The shared-memory regions of one in-flight request."""

    def __init__(self, tag: str, index: int, input_bytes: int, map_bytes: int) -> None:
        self.input_name = f"kd_{tag}_{index}_in"
        self.map_name = f"kd_{tag}_{index}_map"
        self.input_bytes, self.map_bytes = input_bytes, map_bytes
        self.input = shm.create_shared_memory_region(self.input_name, "/" + self.input_name, input_bytes)
        self.map = shm.create_shared_memory_region(self.map_name, "/" + self.map_name, map_bytes) if map_bytes else None

    def destroy(self) -> None:
        shm.destroy_shared_memory_region(self.input)
        if self.map is not None:
            shm.destroy_shared_memory_region(self.map)


class Transport:
    """Async inference of one model over one protocol.

    Args:
        protocol: ``"grpc"`` or ``"http"``.
        url: ``host:port`` of that protocol's endpoint.
        model: The model (ensemble) to call.
        input_name: Its input tensor.
        input_datatype: :data:`~kdcore.contract.UINT8` (pixels) or :data:`~kdcore.contract.BYTES` (encoded files).
        outputs: Output names to request.
        concurrency: Requests kept in flight.
        timeout: Seconds to wait for a reply.
        shared_memory: ``"system"`` to pass pixels and maps through registered shared memory.
        max_batch: Largest batch (sizes the shared-memory regions).
        item_shape: Shape of one input row (sizes the regions).
        map_shape: Shape of one map row, if the FP32 map is requested.
        tls_root: PEM CA certificate for gRPC over TLS.

    ``model`` must have been ready when the transport was built (the scoring client checks it first): a later
    "not found" then means the server restarted or is reloading it, and is classified as unavailable.
    """

    def __init__(
        self,
        protocol: Protocol,
        url: str,
        model: str,
        *,
        input_name: str,
        input_datatype: str,
        outputs: list[str],
        concurrency: int,
        timeout: float,
        shared_memory: Literal["none", "system"] = "none",
        max_batch: int = 1,
        item_shape: tuple[int, ...] = (),
        map_shape: tuple[int, ...] | None = None,
        tls_root: str | None = None,
    ) -> None:
        self.protocol, self.model = protocol, model
        self.input_name, self.input_datatype = input_name, input_datatype
        self.outputs, self.timeout = list(outputs), timeout
        self.module = grpcclient if protocol == "grpc" else httpclient
        self.client = connect(protocol, url, concurrency=concurrency, timeout=timeout, tls_root=tls_root)
        if protocol == "http":
            # One blocking client per thread: tritonclient's greenlet-based async_infer answered each request
            # about 10 ms late when driven from a plain thread (measured: 91 requests/s at any concurrency).
            self._http_local = threading.local()
            self._http_pool = ThreadPoolExecutor(concurrency, thread_name_prefix="http")
            self._http_clients: list = []
            self._url, self._connect_timeout = url, timeout
        self._slots: list[_Slot] = []
        self.map_shape = map_shape
        if shared_memory == "system":
            if input_datatype != UINT8:
                raise ValueError("shared memory carries pixel tensors; encoded input goes over the socket")
            self._open_slots(concurrency, max_batch, item_shape, map_shape)

    @property
    def shared_memory(self) -> bool:
        """Whether requests go through shared memory."""
        return bool(self._slots)

    def _open_slots(self, count: int, max_batch: int, item_shape: tuple[int, ...], map_shape) -> None:
        tag = f"{os.getpid()}_{uuid.uuid4().hex[:8]}"
        input_bytes = max_batch * int(np.prod(item_shape))
        map_bytes = max_batch * int(np.prod(map_shape)) * 4 if map_shape and MAP in self.outputs else 0
        try:
            for i in range(count):
                slot = _Slot(tag, i, input_bytes, map_bytes)
                self._slots.append(slot)
                self.client.register_system_shared_memory(slot.input_name, "/" + slot.input_name, input_bytes)
                if map_bytes:
                    self.client.register_system_shared_memory(slot.map_name, "/" + slot.map_name, map_bytes)
        except Exception:
            self.close()
            raise

    def reregister(self) -> None:
        """Register the shared-memory regions again (a restarted server has forgotten them).

        Raises:
            ServerUnavailable: The server is still down.
            RequestRefused: It refused a region.
        """
        for slot in self._slots:
            for name, size in ((slot.input_name, slot.input_bytes), (slot.map_name, slot.map_bytes)):
                if not size:
                    continue
                try:
                    with contextlib.suppress(InferenceServerException):  # already forgotten: why we register again
                        self.client.unregister_system_shared_memory(name)
                    self.client.register_system_shared_memory(name, "/" + name, size)
                except Exception as e:  # noqa: BLE001  (classified for the caller)
                    raise classify(e) from e

    def submit(self, batch: np.ndarray, slot: int) -> Pending:
        """Send one batch without waiting; ``slot`` (0 .. concurrency-1) must not be in flight already.

        Raises:
            ServerUnavailable, RequestRefused: The request could not even be sent (most failures come later,
                from :meth:`Pending.result`).
        """
        try:
            return self._submit(batch, slot)
        except Exception as e:  # noqa: BLE001  (classified for the caller)
            raise classify(e) from e

    def _submit(self, batch: np.ndarray, slot: int) -> Pending:
        sent_at = time.perf_counter()  # latency includes serialisation, as a caller experiences it
        tensor = self.module.InferInput(self.input_name, list(batch.shape), self.input_datatype)
        requested = [self.module.InferRequestedOutput(o) for o in self.outputs]
        if self._slots:
            region = self._slots[slot]
            shm.set_shared_memory_region(region.input, [np.ascontiguousarray(batch)])
            tensor.set_shared_memory(region.input_name, batch.nbytes)
            if region.map is not None:
                nbytes = batch.shape[0] * int(np.prod(self.map_shape)) * 4
                requested[self.outputs.index(MAP)].set_shared_memory(region.map_name, nbytes)
        else:
            tensor.set_data_from_numpy(batch)
        future: Future = Future()
        if self.protocol == "grpc":
            def on_reply(result, error) -> None:
                done_at = time.perf_counter()
                if error is not None:
                    future.set_exception(error)
                else:
                    future.set_result((result, done_at))

            self.client.async_infer(self.model, [tensor], on_reply, outputs=requested, client_timeout=self.timeout)
        else:
            future = self._http_pool.submit(self._http_infer, tensor, requested)
        return Pending(future, slot, self._unpack, sent_at)

    def _http_infer(self, tensor, requested) -> tuple:
        client = getattr(self._http_local, "client", None)
        if client is None:
            client = self._http_local.client = connect("http", self._url, timeout=self._connect_timeout)
            self._http_clients.append(client)
        result = client.infer(self.model, [tensor], outputs=requested)
        return result, time.perf_counter()

    def _unpack(self, result, slot: int) -> dict[str, np.ndarray]:
        out = {}
        for name in self.outputs:
            if self._slots and name == MAP and self._slots[slot].map is not None:
                meta = result.get_output(name)
                shape = [int(d) for d in (meta["shape"] if isinstance(meta, dict) else meta.shape)]
                out[name] = shm.get_contents_as_numpy(self._slots[slot].map, np.float32, shape).copy()
            else:
                out[name] = result.as_numpy(name)
        return out

    def close(self) -> None:
        """Unregister and free the shared-memory regions and close the connection."""
        for slot in self._slots:
            for name in (slot.input_name, slot.map_name if slot.map is not None else None):
                if name:
                    try:
                        self.client.unregister_system_shared_memory(name)
                    except InferenceServerException:
                        pass  # the server may be gone; the local regions are still freed below
            slot.destroy()
        self._slots = []
        if self.protocol == "http":
            self._http_pool.shutdown(wait=True, cancel_futures=True)
            for client in self._http_clients:
                client.close()
        self.client.close()
