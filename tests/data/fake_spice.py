"""Stand-in for `java -jar spice-1.0.jar` in tests: same command line and same JSON formats, simpler scores.

Called as `fake_spice.py INPUT.json -out OUTPUT.json -subset -silent`. Where SPICE compares scene-graph tuples, this
compares the sets of words: per clip, precision / recall / F1 of the candidate's words against the union of the words
of its references. `FAKE_SPICE_FAIL=1` in the environment makes it fail the way a broken Java setup does.
"""

import json
import os
import sys


def main(argv: list[str]) -> int:
    if os.environ.get("FAKE_SPICE_FAIL"):
        print('Exception in thread "main" java.lang.NoClassDefFoundError: edu/stanford/nlp/Fake', file=sys.stderr)
        return 1
    input_path = argv[0]
    if argv[1:] != ["-out", argv[2], "-subset", "-silent"]:
        print(f"unexpected arguments {argv[1:]}", file=sys.stderr)
        return 2
    with open(input_path) as file:
        items = json.load(file)
    results = []
    for item in items:
        test = set(item["test"].split())
        refs = set(word for ref in item["refs"] for word in ref.split())
        true_positives = len(test & refs)
        precision = true_positives / len(test) if test else 0.0
        recall = true_positives / len(refs)
        f_score = 2 * precision * recall / (precision + recall) if true_positives else 0.0
        results.append(
            {
                "image_id": item["image_id"],
                "test_tuples": [],
                "ref_tuples": [],
                "scores": {
                    "All": {"pr": precision, "re": recall, "f": f_score, "tp": true_positives},
                    "Object": {"pr": "NaN", "re": "NaN", "f": "NaN"},
                },
            }
        )
    with open(argv[2], "w") as file:
        json.dump(results, file)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
