"""What one `getMore` of the event relay's change stream costs SecantusDB after N
writes to a collection the relay does not follow (login_failures, written three
times per login by issue 20's throttle): the stream is the relay's (a stream of
the database, `$match` on three collections, pre-images `whenAvailable`), with
and without pre-images. A measurement of the database, not of allot: it explains
the bursts of the database's CPU that a login flood causes while the relay runs.

  .venv/bin/python bench/change_stream_scan.py
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import run  # noqa: E402
import pymongo  # noqa: E402

FOLLOWED = ["batches", "order_lines", "event_notes"]


def main():
    database = run.Database()
    try:
        db = pymongo.MongoClient(database.uri)["scan"]
        db.create_collection("order_lines", changeStreamPreAndPostImages={"enabled": True})
        for pre_images in (True, False):
            for writes in (0, 10, 70, 280):
                options = {"fullDocumentBeforeChange": "whenAvailable"} if pre_images else {}
                stream = db.command({"aggregate": 1, "cursor": {"batchSize": 0}, "pipeline": [
                    {"$changeStream": options},
                    {"$match": {"ns.coll": {"$in": FOLLOWED},
                                "operationType": {"$in": ["insert", "update", "replace", "delete"]}}}]})
                spent, rounds = 0.0, 10
                for _ in range(rounds):
                    for _ in range(writes):
                        db["login_failures"].update_one({"_id": "k"}, {"$inc": {"count": 1}}, upsert=True)
                    before = database.cpu_seconds_precise()
                    db.command({"getMore": stream["cursor"]["id"], "collection": "$cmd.aggregate",
                                "batchSize": 100, "maxTimeMS": 1})
                    spent += database.cpu_seconds_precise() - before
                print(f"pre-images {'on ' if pre_images else 'off'}, {writes:3} unfollowed writes before it: "
                      f"{1000 * spent / rounds:.2f} ms of the database's CPU per getMore", flush=True)
    finally:
        database.stop()


if __name__ == "__main__":
    main()
