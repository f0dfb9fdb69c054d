"""The original Flask allocation service, reduced to what it did per allocation:
the reference bench/run's `original` phase measures allot against (issue 17).

POST /allocate {orderid, sku, qty}: one `find` of the sku's batches, the choice
made in Python (warehouse stock, eta null, first; then the earliest eta), then
one `findAndModify` on the chosen batch that takes the stock under a guard and
pushes the line into the batch document. 201 {"batchref"}, 400 {"message"}.
POST /batches {reference, sku, purchased_quantity, eta} adds stock; GET /health.
No authentication. Served by gunicorn (sync workers); each worker imports this
module after the fork, so each has its own client.

Environment: MONGO_URI, MONGO_DATABASE.
"""

import datetime
import os

import pymongo
from flask import Flask, jsonify, request

app = Flask(__name__)
batches = pymongo.MongoClient(os.environ["MONGO_URI"])[os.environ["MONGO_DATABASE"]]["batches"]
batches.create_index("sku")


@app.get("/health")
def health():
    return jsonify({"status": "ok"})


@app.post("/batches")
def add_batch():
    body = request.json
    eta = datetime.datetime.fromisoformat(body["eta"]) if body.get("eta") else None
    batches.insert_one({"_id": body["reference"], "sku": body["sku"], "eta": eta,
                        "purchased_quantity": body["purchased_quantity"],
                        "available_quantity": body["purchased_quantity"], "allocations": []})
    return jsonify({"batchref": body["reference"]}), 201


@app.post("/allocate")
def allocate():
    line = {"orderid": request.json["orderid"], "sku": request.json["sku"], "qty": request.json["qty"]}
    sku, qty = line["sku"], line["qty"]
    # The lines already held stay on the server: the choice needs only the counters.
    found = list(batches.find({"sku": sku}, {"allocations": 0}))
    if not found:
        return jsonify({"message": f"Invalid sku {sku}"}), 400
    found.sort(key=lambda b: (b["eta"] is not None, b["eta"] or datetime.datetime.min))
    for batch in found:
        if batch["available_quantity"] < qty:
            continue
        # Another worker may have taken the stock since the find: then the guard
        # fails and the next batch is tried.
        taken = batches.find_one_and_update(
            {"_id": batch["_id"], "available_quantity": {"$gte": qty}},
            {"$inc": {"available_quantity": -qty}, "$push": {"allocations": line}},
            projection={"_id": 1})
        if taken:
            return jsonify({"batchref": batch["_id"]}), 201
    return jsonify({"message": f"Out of stock for sku {sku}"}), 400
