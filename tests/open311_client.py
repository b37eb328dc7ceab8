"""An Open311 GeoReport v2 client written from the specification
(https://wiki.open311.org/GeoReport_v2), not from Vigie's code: it calls every endpoint the way
any Open311 client would (form-encoded POST, .json and .xml formats) and checks the answers
against the specification's field names and error format.

    python3 open311_client.py BASE_URL POINTS_JSON

BASE_URL is the endpoint (e.g. http://127.0.0.1:8064/open311/v2). POINTS_JSON names places of
the territory: {"a": [lat, lon, insee], "b": [lat, lon, insee], "outside": [lat, lon]}, where a
and b are on either side of a commune border. Prints what it did as JSON on stdout (the ids it
created), and exits 1 with a message at the first disagreement.
"""

import json
import sys
import urllib.error
import urllib.parse
import urllib.request
import xml.etree.ElementTree as ET

BASE = sys.argv[1].rstrip("/")
POINTS = json.loads(sys.argv[2])
EMAIL = "habitant@example.org"


def fail(message):
    print(f"open311 client: {message}", file=sys.stderr)
    sys.exit(1)


def check(condition, message):
    if not condition:
        fail(message)


def call(method, path, form=None, body=None, content_type=None):
    """Returns (status, text)."""
    data = None
    headers = {}
    if form is not None:
        data = urllib.parse.urlencode(form, doseq=True).encode()
        headers["Content-Type"] = "application/x-www-form-urlencoded"
    if body is not None:
        data = body
        headers["Content-Type"] = content_type
    request = urllib.request.Request(BASE + path, data=data, method=method, headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


def get_json(path, expected=200):
    status, text = call("GET", path)
    check(status == expected, f"GET {path}: status {status}, expected {expected}: {text}")
    return json.loads(text)


def expect_error(status_text, expected_status, what):
    status, text = status_text
    check(status == expected_status, f"{what}: status {status}, expected {expected_status}: {text}")
    errors = json.loads(text)
    check(isinstance(errors, list) and errors, f"{what}: errors must be a list: {text}")
    check(errors[0].get("code") == expected_status, f"{what}: error code {errors[0]}")
    check(isinstance(errors[0].get("description"), str) and errors[0]["description"], f"{what}: a description")
    return errors[0]["description"]


def post(form):
    return call("POST", "/requests.json", form=form)


# --- services ---------------------------------------------------------------------------------
services = get_json("/services.json")
check(isinstance(services, list) and services, "GET services.json: a non-empty list")
for s in services:
    for field in ("service_code", "service_name", "description", "metadata", "type", "keywords", "group"):
        check(field in s, f"service {s} lacks {field}")
    check(s["type"] in ("realtime", "batch", "blackbox"), f"service type {s['type']}")
codes = {s["service_code"]: s for s in services}
with_metadata = [s for s in services if s["metadata"]]
check(with_metadata, "at least one service with metadata")

status, text = call("GET", "/services.xml")
check(status == 200, f"GET services.xml: {status}")
root = ET.fromstring(text)
check(root.tag == "services", f"XML root {root.tag}")
check(len(root.findall("service")) == len(services), "the XML lists the same services")
check(root.find("service/service_code") is not None, "XML services have service_code")

get_json(f"/services.json?jurisdiction_id={POINTS['a'][2]}")
expect_error(call("GET", "/services.json?jurisdiction_id=99999"), 404, "unknown jurisdiction")

required_service = None
for s in with_metadata:
    definition = get_json(f"/services/{s['service_code']}.json")
    check(definition.get("service_code") == s["service_code"], "definition names its service")
    for a in definition["attributes"]:
        for field in ("variable", "code", "datatype", "required", "datatype_description", "order", "description"):
            check(field in a, f"attribute {a} lacks {field}")
        check(
            a["datatype"] in ("string", "number", "datetime", "text", "singlevaluelist", "multivaluelist"),
            f"datatype {a['datatype']}",
        )
        if a["datatype"].endswith("valuelist"):
            check(all("key" in v and "name" in v for v in a["values"]), "list values have key and name")
        if a["required"] and a["datatype"] == "singlevaluelist":
            required_service = (s["service_code"], a["code"], a["values"][0]["key"])
check(required_service, "a service with a required list attribute")
status, text = call("GET", f"/services/{with_metadata[0]['service_code']}.xml")
check(status == 200 and ET.fromstring(text).tag == "service_definition", "service definition in XML")
expect_error(call("GET", "/services/nope.json"), 404, "unknown service definition")

# --- creating requests ------------------------------------------------------------------------
code, attribute, value = required_service
lat, lon, commune_a = POINTS["a"]


def report_form(lat, lon, **extra):
    form = {
        "service_code": code,
        "lat": str(lat),
        "long": str(lon),
        "description": "Sacs poubelle abandonnés <b>devant</b> l'école",
        "email": EMAIL,
        "first_name": "Camille",
        f"attribute[{attribute}]": value,
    }
    form.update(extra)
    return form


status, text = post(report_form(lat, lon, jurisdiction_id=commune_a))
check(status in (200, 201), f"POST requests.json: {status} {text}")
created = json.loads(text)
check(isinstance(created, list) and len(created) == 1, f"POST answer is a one-item list: {text}")
first = created[0]
check(first.get("service_request_id") or first.get("token"), "an id or a token")
first_id = first["service_request_id"]

description = expect_error(post({k: v for k, v in report_form(lat, lon).items() if not k.startswith("attribute")}), 400, "missing required attribute")
check(attribute in description, f"the error names the attribute: {description}")
expect_error(post(report_form(lat, lon, service_code="nope")), 404, "unknown service_code")
expect_error(post(report_form(*POINTS["outside"])), 400, "a location outside the territory")
expect_error(post(report_form(lat, lon, jurisdiction_id=POINTS["b"][2])), 400, "the wrong jurisdiction")
expect_error(post({"service_code": code, f"attribute[{attribute}]": value}), 400, "no location")
expect_error(post(report_form("nord", lon)), 400, "lat not a number")
expect_error(call("POST", "/requests.json", body=b'{"service_code": "x"}', content_type="application/json"), 415, "JSON body")
expect_error(post(report_form(lat, lon, description="x" * 100_000)), 413, "an oversized request")

# 20 m north of the first: a duplicate; 60 m north: a new report.
north = lambda m: lat + m / 111_132.0
status, text = post(report_form(north(20), lon))
duplicate = json.loads(text)[0]
check(status in (200, 201), f"duplicate POST: {status} {text}")
check(first_id in duplicate.get("service_notice", ""), f"the reporter is told of the first report: {duplicate}")
status, text = post(report_form(north(60), lon))
beyond = json.loads(text)[0]
check(first_id not in beyond.get("service_notice", ""), f"60 m away is another report: {beyond}")

# Either side of the border, 20 m apart: two communes, not duplicates.
a_side = post(report_form(POINTS["a"][0], POINTS["a"][1]))
b_side = post(report_form(POINTS["b"][0], POINTS["b"][1]))
check(b_side[0] in (200, 201), f"the other side of the border: {b_side}")
b_id = json.loads(b_side[1])[0]["service_request_id"]

# --- reading requests -------------------------------------------------------------------------
one = get_json(f"/requests/{duplicate['service_request_id']}.json")
check(isinstance(one, list) and len(one) == 1, "GET requests/{id}.json is a one-item list")
r = one[0]
for field in (
    "service_request_id", "status", "status_notes", "service_name", "service_code", "description",
    "agency_responsible", "service_notice", "requested_datetime", "updated_datetime", "expected_datetime",
    "address", "address_id", "zipcode", "lat", "long", "media_url",
):
    check(field in r, f"request lacks {field}")
check(r["status"] in ("open", "closed"), f"status {r['status']}")
check(r.get("duplicate_of") == first_id, f"the duplicate names the first: {r}")
check("T" in r["requested_datetime"], "requested_datetime is ISO 8601")
check(EMAIL not in json.dumps(one), "the reporter's e-mail is never published")
check("<b>" in r["description"], "text comes back as given (escaping is the client's job)")
first_again = get_json(f"/requests/{first_id}.json")[0]
# Its duplicates: the one 20 m away, and the one on its side of the border (the same spot).
check(first_again.get("duplicate_count") == 2, f"the first report counts its duplicates: {first_again}")
check(abs(first_again["lat"] - lat) < 1e-9 and abs(first_again["long"] - lon) < 1e-9, "lat/long kept")
b_request = get_json(f"/requests/{b_id}.json")[0]
check(b_request.get("jurisdiction_id") == POINTS["b"][2], f"routed to the other commune: {b_request}")
check(not b_request.get("duplicate_of"), "no duplicate across a border")

status, text = call("GET", f"/requests/{first_id}.xml")
check(status == 200, f"GET requests/{{id}}.xml: {status}")
root = ET.fromstring(text)
check(root.tag == "service_requests" and root.find("request/service_request_id").text == first_id, "XML request")
check(EMAIL not in text, "no e-mail in XML either")

# A citizen's text with characters XML 1.0 forbids (U+FFFE, U+FFFF, C0 controls): taken without
# them, and requests.xml stays readable for every client.
status, text = post(report_form(north(300), lon, description="Lampadaire \ufffe\uffff\x01\x0b cassé"))
check(status in (200, 201), f"POST with characters XML forbids: {status} {text}")
status, text = call("GET", "/requests.xml")
check(status == 200, f"GET requests.xml: {status}")
try:
    ET.fromstring(text)
except ET.ParseError as e:
    fail(f"requests.xml is not well-formed XML once a citizen wrote U+FFFE: {e}")
check("Lampadaire  cassé" in text or "Lampadaire cassé" in text, "the rest of the text is kept")

token = get_json(f"/tokens/{first['token']}.json")
check(token[0]["service_request_id"] == first_id, f"the token stands for the request: {token}")
expect_error(call("GET", "/tokens/nope.json"), 404, "unknown token")
expect_error(call("GET", "/requests/999999.json"), 404, "unknown request")

in_a = get_json(f"/requests.json?jurisdiction_id={commune_a}&service_code={code}&status=open")
check(all(x["jurisdiction_id"] == commune_a for x in in_a), "filtered by jurisdiction")
check(first_id in [x["service_request_id"] for x in in_a], "the first report is open in its commune")
closed = get_json(f"/requests.json?jurisdiction_id={commune_a}&status=closed")
check(duplicate["service_request_id"] in [x["service_request_id"] for x in closed], "a duplicate is closed")
ids = get_json(f"/requests.json?service_request_id={first_id},{b_id}")
check(sorted(x["service_request_id"] for x in ids) == sorted([first_id, b_id]), f"by ids: {ids}")
page = get_json(f"/requests.json?page_size=2&page=2")
check(len(page) == 2, f"page 2 of 2: {page}")
everything = get_json("/requests.json?page_size=1000")
check(page[0]["service_request_id"] == everything[2]["service_request_id"], "pages follow the list")
expect_error(call("GET", "/requests.json?start_date=hier"), 400, "a bad date")
expect_error(call("GET", "/requests.json?status=perdu"), 400, "a bad status")
expect_error(call("GET", "/requests.txt"), 404, "an unknown format")

print(json.dumps({"first": first_id, "duplicate": duplicate["service_request_id"], "other_commune": b_id, "token": first["token"]}))
