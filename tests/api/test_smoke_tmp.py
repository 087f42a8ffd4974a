import json
async def test_smoke(single):
    c = single
    cl = c.client
    L = c.leader_url
    async def show(label, r):
        print(label, r.status_code, dict(r.headers), r.text[:200])
    for k in ["%2Flead", "a%2F%2Fb", "%2E%2E", "%2E", "a%2F%2E%2E%2Fb", "x%2F"]:
        r = await cl.put(f"{L}/kv/{k}", json={"value": k})
        await show(f"PUT {k}", r)
        r = await cl.get(f"{L}/kv/{k}")
        await show(f"GET {k}", r)
    r = await cl.patch(f"{L}/kv/a"); await show("405", r)
    r = await cl.put(f"{L}/kv/a", json={"value": 5}); await show("int", r)
    r = await cl.post(f"{L}/kv", json={"key": None, "value": "x"}); await show("nullkey", r)
    r = await cl.put(f"{L}/kv/a", json={"value": None}); await show("nullval", r)
    r = await cl.put(f"{L}/kv/" + "k"*1025, json={"value": "x"}); await show("bigkey", r)
    r = await cl.get(f"{L}/kv/" + "k"*1025); await show("bigkey get", r)
    r = await cl.delete(f"{L}/kv/" + "k"*1025); await show("bigkey del", r)
    r = await cl.put(f"{L}/kv/" + "k"*5000, json={"value": "x"}); await show("hugekey", r)
    r = await cl.put(f"{L}/kv/big", json={"value": "v"*(1024*1024+1)}); await show("bigval", r)
    r = await cl.put(f"{L}/kv/big", json={"value": "v"*(1024*1024)}); await show("maxval", r)
    r = await cl.put(f"{L}/kv/big", content=b" "*(3*1024*1024)); await show("bigbody", r)
    r = await cl.put(f"{L}/kv/big", content=b" "*(70*1024*1024)); await show("hugebody", r)
    r = await cl.put(f"{L}/kv/a", json={"value": "x"}, headers={"Idempotency-Key": "c:"+"9"*300}); await show("long idem", r)
    r = await cl.get(f"{L}/kv", params={"prefix": "", "limit": "2"}); await show("range", r)
    r = await cl.get(f"{L}/status"); await show("status", r)
