#!/usr/bin/python3
"""dps-sim: an Azure IoT Hub Device Provisioning Service (TPM attestation) + minimal IoT Hub simulator.

It speaks the DPS device REST API byte for byte as in
/work/shared/reference/dps-tpm-protocol.md, including the real crypto: the 401
challenge carries an authenticationKey blob (MakeCredential to the device's EK,
bound to its SRK, plus a duplicated HMAC key) that only that TPM can import, and
every SAS token is verified with the key it was given. The final assignment
carries a *different* HMAC key that becomes the device's IoT Hub key, so a
client that skips the second import is caught by the hub.

Files: dps_sim.py (this: usage + CLI), sim_core.py (behaviour, error codes), sim_hub.py (the
hub's module registry and module telemetry),
sim_http.py (HTTPS + control servers), simcrypto.py (CA/TLS, SAS),
simctl.py (Python control client, SimServer for tests), ../lib/authblob.py (blob).
Needs only Debian's /usr/bin/python3 with python3-cryptography and python3-tpm2-pytss.

QUICK START (shell)
    S=/tmp/dps-state
    ./dps_sim.py serve --state $S --port 8443 &          # prints endpoint, CA path, id scope
    tpm2_readpublic -c 0x81010001 -o ek.pub
    ./dps_sim.py enroll --state $S --regid dev1 --ek-file ek.pub --hub hub1.azure-devices.net
    # device: global_endpoint = "https://127.0.0.1:8443", id_scope = "0ne00000001",
    #         registration_id = "dev1"; trust $S/ca.pem (e.g. CURLOPT_CAINFO)
    ./dps_sim.py status --state $S --regid dev1          # shows status assigned + hub + deviceId
    ./dps_sim.py log --state $S                          # request log

DEVICE ENDPOINT (HTTPS on 127.0.0.1:PORT, never other interfaces)
    PUT /{idScope}/registrations/{regid}/register?api-version=2021-06-01
        no Authorization, body with tpm.endorsementKey/storageRootKey
            -> 401 {"message","authenticationKey","unencryptedAuthenticationKey":null,"keyName":"registration"}
        Authorization: SharedAccessSignature sr=..&sig=..&se=..&skn=registration (body with or without tpm)
            -> 202 {"operationId","status":"assigning"} + retry-after + Location
    GET /{idScope}/registrations/{regid}/operations/{opId}?api-version=...  (same Authorization)
            -> 202 assigning (--polls times, registrationState.registrationId included), then
               200 {"operationId","status":"assigned","registrationState":{registrationId, assignedHub,
               deviceId, status, substatus, createdDateTimeUtc, lastUpdatedDateTimeUtc, etag,
               tpm.authenticationKey, payload (custom policy only)}}
    Error codes and bodies: see sim_core.py's docstring.

    The SAS for DPS is checked as in the reference §4.5: sr kept raw for the HMAC,
    urldecode(sr) == "{idScope}/registrations/{regid}" case-insensitively, skn ==
    "registration", se + skew > now, HMAC with the key of the LATEST 401 blob for that
    registration (constant-time compare). Skew defaults to 300 s (config sasSkewSeconds).

IOT HUB (same port)
    The hub a request is for is taken from the Host header (port stripped, lowercased), so
    address it by its assigned name and point that name at the simulator:
        libcurl: CURLOPT_CONNECT_TO "hub1.azure-devices.net:443:127.0.0.1:PORT"
                 (or CURLOPT_RESOLVE "hub1.azure-devices.net:PORT:127.0.0.1" with the URL's port)
        curl:    --connect-to hub1.azure-devices.net:443:127.0.0.1:PORT --cacert $S/ca.pem
    The TLS certificate covers localhost, 127.0.0.1, *.azure-devices.net,
    global.azure-devices-provisioning.net and *.azure-devices-provisioning.net; add names with
    `serve --san NAME` (OpenSSL rejects single-label wildcards like *.localhost, so list those).
    Without name mapping, /hub/{hubName}/devices/... on 127.0.0.1 works too.
        GET  /devices/{deviceId}?api-version=...                  -> 200 device (capabilities.iotEdge)
        POST /devices/{deviceId}/messages/events?api-version=...  -> 204 (counted in the hub record)
        GET  /devices/{deviceId}/messages/deviceBound?api-version=...  -> 204 (C2D: Edge and plain devices)
        GET|PUT|DELETE /devices/{deviceId}/modules[/{moduleId}]?api-version=2017-11-08-preview
                                    module registry, IoT Edge devices only (plain: 401); see sim_hub.py
        POST /devices/{d}/modules/{m}/messages/events?api-version=2020-03-13
                                    module telemetry with a MODULE SAS (sr {hub}/devices/{d}/modules/{m})
    Auth: device SAS, sr = {hub}/devices/{deviceId} (urldecoded, case-insensitive), NO skn,
    signed with the key from the final blob. Anything else -> 401 IotHubUnauthorizedAccess.

ENROLLMENTS (individual, TPM)
    registrationId, endorsementKey (base64 TPM2B_PUBLIC; compared byte for byte with the
    presented EK), deviceId (default = registrationId), iotEdge (default true: the guide
    enables IoT Edge; false or `enroll --plain` makes a plain device), tags (initial twin tags),
    iotHubs (linked hubs), allocationPolicy:
        hashed  SHA-256(regid) mod len(iotHubs)   (default)
        static  first linked hub
        custom  hub from request payload {"iotHubHostName": h} if linked, else the first; the
                registrationState.payload is customPayload if set, else the request payload (echo)
    provisioningStatus enabled|disabled. `move` relinks to one hub (static) and, by default,
    deletes the device from its current hub so old credentials get 401 there.
    Re-registration to a different hub reports substatus deviceDataMigrated.

FAULT INJECTION  (applies to the next COUNT requests matching ROUTE [and REGID], first rule wins)
    routes: any, register (both PUTs), register-challenge (PUT w/o auth), register-auth, operation,
            hub (every hub request), hub-modules (the module registry calls only)
            (on hub requests throttle/unavailable/error answer in the hub's error shape, Retry-After
            only when retryAfter is given)
    kinds:  throttle     429 + retry-after (retryAfter, default 1) + DPS error body 429001
            unavailable  503 + retry-after
            error        500 (500000)
            status       answer `status` with `body` (JSON, default {}) without processing
            reset        read the request, then abort the TCP connection (RST), no response
            stall        sleep `seconds`, then process normally
            malformed    process normally, send the JSON body truncated to half
    CLI: ./dps_sim.py fault --state $S --route register-challenge --kind throttle --count 2

CONTROL API  (HTTP/1.1 + JSON on the Unix socket STATE/control.sock, mode 0600;
              e.g. curl --unix-socket $S/control.sock http://x/enrollments)
    GET /info                       endpoint, port, caPath, idScope, config
    GET|PATCH /config               {idScope, assigningPolls, retryAfter, sasSkewSeconds}
    GET|PUT /quota                  PUT {windowSeconds, units, registrationsPerUnit, pollsPerUnit,
                                    pollsPerDevice, deviceWindowSeconds} (0 = no limit; resets the counters)
                                    -> {"quota", "counters": {requests, throttled, early, devices: {regid:
                                    {requests, registrations, polls, throttled, early}}}}; over a limit
                                    DPS requests get 429 + retry-after (see sim_core.QUOTA_DEFAULTS)
    GET /enrollments                all, with registrationState
    GET|PUT|PATCH|DELETE /enrollments/{regid}
    POST /enrollments/{regid}/move  {"hub": h, "revokeOld": true}
    GET|PATCH|DELETE /hubs/{hub}/devices/{id}   (PATCH {"status":"disabled"} or {"iotEdge":false};
                                     GET shows primaryKey, messages)
    PUT /hubs/{hub}/devices/{id}    {"iotEdge":true,"primaryKey":b64,"status"}: a hub device without DPS
    GET /hubs/{hub}/devices/{id}/modules        {"modules":[...+messages,lastMessage],"counts":{...}}
    DELETE /hubs/{hub}/devices/{id}/module-counts
    GET|PUT|DELETE /hubs/{hub}/devices/{id}/modules/{m}   operator view / create / delete
    GET|POST|DELETE /faults         POST {"route","kind","count","regid","status","body","retryAfter","seconds"}
    GET|DELETE /log[?since=SEQ]     [{seq, ts, method, path, host, route, regid, status,
                                      auth: none|valid|invalid, fault, reason}]
    Errors: 400/404 {"error": "..."}.

STATE DIR
    ca.pem (trust this), ca.key, server.pem/.key (re-issued at each start), state.json
    (enrollments, registrations, hub devices; survives restarts), hub-modules.json (module
    identities per hub and device incarnation; survives restarts), info.json (written once
    serving: {"port","globalEndpoint","caPath","idScope","controlSocket"}), control.sock.
"""
import argparse
import json
import os
import signal
import sys
import threading

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

DEFAULT_STATE = os.environ.get("DPS_SIM_STATE", "./dps-sim-state")


def serve(args):
    import sim_core
    import sim_http
    import simcrypto
    os.makedirs(args.state, mode=0o700, exist_ok=True)
    ca, cert, key = simcrypto.ensure_tls(args.state, args.san)
    sim = sim_core.Simulator(args.state, id_scope=args.id_scope, assigning_polls=args.polls,
                             retry_after=args.retry_after)
    # Command-line values win over the persisted config of an earlier run.
    sim.set_config({"idScope": args.id_scope, "assigningPolls": args.polls, "retryAfter": args.retry_after})
    dev = sim_http.DeviceServer(("127.0.0.1", args.port), sim, cert, key)
    port = dev.server_address[1]
    sock = os.path.join(args.state, "control.sock")
    info = {"port": port, "globalEndpoint": "https://127.0.0.1:%d" % port, "caPath": ca,
            "idScope": args.id_scope, "controlSocket": sock}
    ctl = sim_http.ControlServer(sock, sim, info)
    threading.Thread(target=ctl.serve_forever, daemon=True).start()

    info_path = os.path.join(args.state, "info.json")
    with open(info_path + ".tmp", "w") as f:
        json.dump(info, f)
    os.replace(info_path + ".tmp", info_path)
    print("dps-sim: endpoint %s  id_scope %s" % (info["globalEndpoint"], args.id_scope))
    print("dps-sim: CA %s" % ca)
    print("dps-sim: control %s" % sock, flush=True)

    def stop(*_):
        threading.Thread(target=dev.shutdown, daemon=True).start()
    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    try:
        dev.serve_forever()
    finally:
        ctl.shutdown()
        dev.server_close()
        ctl.server_close()
        for p in (sock, info_path):
            try:
                os.unlink(p)
            except FileNotFoundError:
                pass
    return 0


def _client(args):
    import simctl
    return simctl.SimClient(args.state)


def _print(obj):
    print(json.dumps(obj, indent=2, sort_keys=True))


def cmd_enroll(args):
    with open(args.ek_file, "rb") as f:
        ek = f.read()
    tags = {}
    for t in args.tag or []:
        k, sep, v = t.partition("=")
        if not sep:
            raise SystemExit("--tag wants KEY=VALUE")
        tags[k] = v
    payload = json.loads(args.custom_payload) if args.custom_payload else None
    _print(_client(args).enroll(args.regid, ek, hubs=args.hub or [], device_id=args.device_id,
                                iot_edge=args.edge, tags=tags, policy=args.allocation,
                                custom_payload=payload, enabled=not args.disabled))


def cmd_status(args):
    c = _client(args)
    _print(c.status(args.regid) if args.regid else c.enrollments())


def cmd_set(args, enabled):
    _print(_client(args).enable(args.regid, enabled))


def cmd_delete(args):
    _client(args).delete(args.regid)


def cmd_move(args):
    _print(_client(args).move(args.regid, args.hub, not args.keep_old))


def cmd_fault(args):
    kw = {}
    for k in ("regid", "status", "seconds"):
        if getattr(args, k) is not None:
            kw[k] = getattr(args, k)
    if args.retry_after is not None:
        kw["retryAfter"] = args.retry_after
    if args.body is not None:
        kw["body"] = json.loads(args.body)
    if args.clear:
        _client(args).clear_faults()
        return
    _print(_client(args).fault(args.route, args.kind, args.count, **kw))


def cmd_log(args):
    for e in _client(args).log(args.since):
        print("%5d %.3f %-6s %-3s %-7s %-18s %s%s" % (e["seq"], e["ts"], e["method"], e["status"], e["auth"],
                                                     e["route"], e["path"],
                                                     "  [fault %s]" % e["fault"] if e["fault"] else ""))


def cmd_hub_device(args):
    _print(_client(args).hub_device(args.hub, args.device_id))


def main(argv=None):
    p = argparse.ArgumentParser(prog="dps_sim.py", description="Azure DPS (TPM) + IoT Hub simulator",
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog="See the module docstring (head -120 dps_sim.py) for the full protocol.")
    sub = p.add_subparsers(dest="cmd", required=True)

    def add(name, fn, help):
        sp = sub.add_parser(name, help=help)
        sp.add_argument("--state", default=DEFAULT_STATE, help="state dir (default $DPS_SIM_STATE or %(default)s)")
        sp.set_defaults(fn=fn)
        return sp

    s = add("serve", serve, "run the simulator (foreground)")
    s.add_argument("--port", type=int, default=0, help="HTTPS port on 127.0.0.1 (0 = pick one)")
    s.add_argument("--id-scope", default="0ne00000001")
    s.add_argument("--polls", type=int, default=1, help="202 'assigning' answers before the result")
    s.add_argument("--retry-after", type=int, default=1, help="retry-after seconds on 202")
    s.add_argument("--san", action="append", default=[], help="extra DNS/IP name for the server certificate")

    s = add("enroll", cmd_enroll, "create or replace an individual TPM enrollment")
    s.add_argument("--regid", required=True)
    s.add_argument("--ek-file", required=True, help="EK as marshalled TPM2B_PUBLIC (tpm2_readpublic -o)")
    s.add_argument("--device-id")
    s.add_argument("--hub", action="append", help="linked IoT hub host name (repeatable)")
    s.add_argument("--allocation", choices=("hashed", "static", "custom"), default="hashed")
    s.add_argument("--edge", action="store_true", default=True, help="IoT Edge device (the default)")
    s.add_argument("--plain", dest="edge", action="store_false", help="a plain (non-IoT Edge) device")
    s.add_argument("--tag", action="append", help="initial twin tag KEY=VALUE (repeatable)")
    s.add_argument("--custom-payload", help="JSON returned as payload by the custom policy")
    s.add_argument("--disabled", action="store_true")

    s = add("status", cmd_status, "show an enrollment and its registration state (all without --regid)")
    s.add_argument("--regid")
    for name, on in (("enable", True), ("disable", False)):
        s = add(name, lambda a, on=on: cmd_set(a, on), "%s an enrollment" % name)
        s.add_argument("--regid", required=True)
    s = add("delete", cmd_delete, "delete an enrollment")
    s.add_argument("--regid", required=True)
    s = add("move", cmd_move, "link an enrollment to another hub")
    s.add_argument("--regid", required=True)
    s.add_argument("--hub", required=True)
    s.add_argument("--keep-old", action="store_true", help="keep the device on its current hub")
    s = add("fault", cmd_fault, "inject a fault for the next requests")
    s.add_argument("--route", default="any")
    s.add_argument("--kind", default="throttle")
    s.add_argument("--count", type=int, default=1)
    s.add_argument("--regid")
    s.add_argument("--status", type=int)
    s.add_argument("--body", help="JSON body for --kind status")
    s.add_argument("--retry-after", type=int)
    s.add_argument("--seconds", type=float)
    s.add_argument("--clear", action="store_true", help="remove all pending faults")
    s = add("log", cmd_log, "print the request log")
    s.add_argument("--since", type=int, default=0)
    s = add("hub-device", cmd_hub_device, "show a device in a simulated hub")
    s.add_argument("--hub", required=True)
    s.add_argument("--device-id", required=True)

    args = p.parse_args(argv)
    try:
        return args.fn(args) or 0
    except Exception as e:     # CLI: one clear line, not a traceback
        if args.cmd == "serve":
            raise
        print("dps_sim.py %s: %s" % (args.cmd, e), file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
