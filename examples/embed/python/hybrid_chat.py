#!/usr/bin/env python3
"""An app embedding foreshore from Python through ctypes (no packages):
a routed chat request, edge in process and cloud over HTTP.

Run: hybrid_chat.py LIBFORESHORE MODEL_FOLDER CLOUD_BASE_URL
  LIBFORESHORE: the library, e.g. <prefix>/lib/libforeshore.so.0
"""
import ctypes
import json
import sys


class RouteHints(ctypes.Structure):
    _fields_ = [(name, ctypes.c_char_p) for name in
                ("data_class", "tier", "latency_budget_ms", "cost_ceiling_usd", "session")]


TOKEN_CALLBACK = ctypes.CFUNCTYPE(ctypes.c_bool, ctypes.POINTER(ctypes.c_char), ctypes.c_size_t,
                                  ctypes.c_void_p)
LOG_CALLBACK = ctypes.CFUNCTYPE(None, ctypes.c_int, ctypes.c_char_p, ctypes.c_void_p)


class ChatParams(ctypes.Structure):
    _fields_ = [("hints", RouteHints), ("on_token", TOKEN_CALLBACK), ("user_data", ctypes.c_void_p)]


class HybridParams(ctypes.Structure):
    _fields_ = [("config_yaml", ctypes.c_char_p), ("config_path", ctypes.c_char_p),
                ("log", LOG_CALLBACK), ("log_user_data", ctypes.c_void_p)]


def load(path):
    lib = ctypes.CDLL(path)
    lib.foreshore_version.restype = ctypes.c_char_p
    lib.foreshore_last_error.restype = ctypes.c_char_p
    lib.foreshore_status_name.restype = ctypes.c_char_p
    lib.foreshore_status_name.argtypes = [ctypes.c_int]
    lib.foreshore_set_model_search_path.argtypes = [ctypes.c_char_p]
    lib.foreshore_hybrid_default_params.restype = HybridParams
    lib.foreshore_hybrid_create.argtypes = [ctypes.POINTER(HybridParams), ctypes.POINTER(ctypes.c_void_p)]
    lib.foreshore_hybrid_free.argtypes = [ctypes.c_void_p]
    lib.foreshore_hybrid_route.argtypes = [ctypes.c_void_p, ctypes.c_char_p, ctypes.POINTER(RouteHints),
                                           ctypes.POINTER(ctypes.c_void_p)]
    lib.foreshore_chat_default_params.restype = ChatParams
    lib.foreshore_hybrid_chat.argtypes = [ctypes.c_void_p, ctypes.c_char_p, ctypes.POINTER(ChatParams),
                                          ctypes.POINTER(ctypes.c_void_p), ctypes.POINTER(ctypes.c_int)]
    lib.foreshore_string_free.argtypes = [ctypes.c_void_p]
    return lib


def take(lib, pointer):
    """The library's string as Python text, released."""
    text = ctypes.string_at(pointer.value).decode() if pointer.value else ""
    lib.foreshore_string_free(pointer)
    return text


def check(lib, status, what):
    if status != 0:
        raise RuntimeError(f"{what}: {lib.foreshore_status_name(status).decode()}: "
                           f"{lib.foreshore_last_error().decode()}")


def main():
    if len(sys.argv) != 4:
        sys.exit(__doc__)
    lib = load(sys.argv[1])
    print("foreshore", lib.foreshore_version().decode())
    check(lib, lib.foreshore_set_model_search_path(sys.argv[2].encode()), "set_model_search_path")
    yaml = ("tiers:\n"
            "  edge: {kind: embedded, placement: device, model: stories260K, threads: 1}\n"
            f"  cloud: {{kind: openai, placement: cloud, endpoint: '{sys.argv[3]}', model: stories260K}}\n"
            "routing: {policy: threshold}\n").encode()
    params = lib.foreshore_hybrid_default_params()
    params.config_yaml = yaml
    hybrid = ctypes.c_void_p()
    check(lib, lib.foreshore_hybrid_create(ctypes.byref(params), ctypes.byref(hybrid)), "hybrid_create")
    request = json.dumps({"model": "foreshore", "max_tokens": 8, "temperature": 0,
                          "messages": [{"role": "user", "content": "Once upon a time"}]}).encode()
    decision = ctypes.c_void_p()
    check(lib, lib.foreshore_hybrid_route(hybrid, request, None, ctypes.byref(decision)), "hybrid_route")
    print("route:", json.dumps(json.loads(take(lib, decision))["plan"]))

    pieces = []
    chat = lib.foreshore_chat_default_params()
    chat.hints.tier = b"cloud"
    chat.on_token = TOKEN_CALLBACK(lambda text, length, _: pieces.append(ctypes.string_at(text, length)) or True)
    reply = ctypes.c_void_p()
    http_status = ctypes.c_int()
    status = lib.foreshore_hybrid_chat(hybrid, request, ctypes.byref(chat), ctypes.byref(reply),
                                       ctypes.byref(http_status))
    answer = json.loads(take(lib, reply))
    check(lib, status, "hybrid_chat")
    print("chat: HTTP", http_status.value, "tier", answer["foreshore"]["tier"], "pieces", len(pieces))
    print("content:", answer["choices"][0]["message"]["content"])
    lib.foreshore_hybrid_free(hybrid)


if __name__ == "__main__":
    main()
