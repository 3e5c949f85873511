#!/usr/bin/env python3
"""Writes the seed inputs of both fuzz targets (see fuzz_targets/*.rs for the layout).
Run from fuzz/: python3 seeds/make_seeds.py"""
import gzip, os

HERE = os.path.dirname(os.path.abspath(__file__))

def GZ(data):
    return gzip.compress(data, mtime=0)

def write(target, name, data):
    with open(os.path.join(HERE, target, name), "wb") as f:
        f.write(data)

def edge(name, mode, aux, header, body):
    h = header.encode()
    write("edge_request", name, bytes([mode, aux, len(h)]) + h + body.encode())

# mode: bits 0-1 route (0 events, 2 segment single, 3 segment batch),
#       bits 2-3 encoding (0 none, 1 identity, 2 gzip as is, 3 gzip here), bit 4 enrich
# aux: bits 0-2 segment type (track identify page screen group alias), bits 3-4 received_at
edge("events_single", 0x10, 0, "Bearer sk_test", '{"event":"signup"}')
edge("events_full", 0x10, 0, "", '{"event":"purchase","id":"order-42","timestamp":"2023-11-14T22:13:19.500Z",'
     '"user_id":12345,"anonymous_id":"anon","session_id":"s1","properties":{"amount":12.5,"tags":["a","b"]},'
     '"context":{"user_agent":"sdk-ua","library":"js"}}')
edge("events_array", 0x04, 0, "sk_query_key", '[{"event":"a","timestamp":1700000000000},{"event":"b","id":"dup"},{"event":"köp 🛒 購入"}]')
edge("events_batch_sentat", 0x10, 0, "", '{"sentAt":"2023-11-14T22:13:30Z","batch":[{"event":"a","timestamp":"2023-11-14T22:13:29Z"},{"event":"b"}]}')
edge("events_batch_ms", 0x00, 0, "", '{"sentAt":1699999990000,"batch":[{"event":"a","timestamp":1699999985000,"properties":null,"context":null}]}')
edge("events_x_gzip", 0x1c, 0, "Bearer k", '{"event":"gz","properties":{"n":1}}')
write("edge_request", "events_gzip", bytes([0x08, 0, 0]) + GZ(b'[{"event":"gz"},{"event":"gz2"}]'))
edge("segment_track", 0x12, 0, "Basic d2s6", '{"userId":"u1","event":"Clicked","properties":{"x":1},'
     '"messageId":"m-1","timestamp":"2023-11-14T22:13:20Z","sentAt":"2023-11-14T22:13:21Z","context":{"userAgent":"ua"}}')
edge("segment_identify", 0x02, 1, "", '{"writeKey":"wk_1","anonymousId":"a1","traits":{"plan":"pro"}}')
edge("segment_page", 0x12, 2, "", '{"userId":7,"name":"Home","category":"Docs","properties":{"url":"https://example.com/"}}')
edge("segment_group", 0x02, 4, "Bearer wk", '{"userId":"u","groupId":"acme","traits":{"size":5}}')
edge("segment_alias", 0x02, 5, "", '{"userId":"new","previousId":"old","originalTimestamp":1700000000000}')
edge("segment_batch", 0x13, 0, "", '{"writeKey":"wk","sentAt":"2023-11-14T22:13:21Z","context":{"library":{"name":"analytics.js"}},'
     '"batch":[{"type":"track","userId":"u","event":"e","messageId":"' + "m" * 80 + '"},'
     '{"type":"identify","anonymousId":"a"},{"type":"bogus","userId":"u"},{"type":"screen","userId":"u","name":"S"}]}')

# Regressions: inputs the fuzzer found (see the report in the commit that added them).
edge("regress_sent_at_overflow", 0x00, 0, "", '{"sentAt":-9223372036854775808,"batch":[{"event":"a","timestamp":1}]}')
edge("regress_float_roundtrip", 0x00, 0, "", '{"event":"gz","properties":{"n":922337203368547758070}}')

def backend(name, mode, body):
    write("backend_batch", name, bytes([mode]) + body)

one = ('{"id":"0190b6e0-0000-7000-8000-000000000001","env_id":7,"name":"purchase","timestamp":1700000000000,'
       '"received_at":1700000000050,"user_id":"u1","properties":{"amount":12.5},"context":{"country":"DE"}}')
seg = ('{"id":"order-42","env_id":7,"name":"group","timestamp":0,"received_at":253402300799999,"anonymous_id":"a",'
       '"session_id":"s","type":"group","traits":{"plan":"enterprise"},"group_id":"acme","previous_id":"p"}')
backend("one", 0, ("[" + one + "]").encode())
backend("two", 0, ("[" + one + "," + seg + "]").encode())
backend("gzip_as_is", 2, GZ(("[" + one + "]").encode()))
backend("gzip_multi_member", 2, GZ(b"[" + one.encode()) + GZ(b"," + seg.encode() + b"]"))
backend("gzip_here", 3, ("[" + seg + "]").encode())
backend("tiny_limits", 4 | (1 << 3), ("[" + one + "," + one + "]").encode())
