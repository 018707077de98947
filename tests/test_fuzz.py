import time
import pytest
import schemathesis
from hypothesis import settings, HealthCheck
from schemathesis.python import asgi
from service.app import create_app
from service.config import Settings
from tests.conftest import WEIGHTS

@pytest.fixture
def api_schema():
    app = create_app(Settings(weights_dir=WEIGHTS, warmup_batches=1))
    schema = schemathesis.openapi.from_asgi("/openapi.json", app)
    with asgi.get_client(app) as http:
        for _ in range(600):
            if http.get("/readyz").status_code == 200: break
            time.sleep(0.05)
        else: raise AssertionError("not ready")
    return schema

schema = schemathesis.pytest.from_fixture("api_schema")

@schema.parametrize()
@settings(max_examples=30, deadline=None, suppress_health_check=list(HealthCheck))
def test_api(case):
    t=time.perf_counter()
    r = case.call_and_validate()
    print(case.method, case.path, r.status_code, round(time.perf_counter()-t,3))
