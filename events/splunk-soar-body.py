# Splunk SOAR custom function "mde_offboard_body": builds the generic body
# for the HTTP app's "post data" action. Inputs: container_id (the
# container's id), devices (a list of host names or machine ids).
# Output: body, a JSON string; pass it as post data's "body".
def mde_offboard_body(container_id=None, devices=None, **kwargs):
    import json

    outputs = {}
    outputs["body"] = json.dumps({
        "ticket": "SOAR-" + str(container_id),  # a string, never a number
        "comment": "Offboarded by Splunk SOAR",
        "devices": [d for d in (devices or []) if d],  # a JSON array
    })
    assert json.dumps(outputs)  # the output must be serialisable
    return outputs
