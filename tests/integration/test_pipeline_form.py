"""The pipeline's run form, as a real Prefect server holds it for the deployed flow: typed,
ranged, optional configuration fields with the presets' values as hints; the API refuses a
bad value before any run exists."""

from __future__ import annotations

import pytest

from pneumo_core.config.run import RunConfig
from tests.integration.conftest import PrefectServer

GIVEN = {"source": "kaggle://rsna-pneumonia-detection-challenge", "storage": "file:///tmp/x"}


def test_deployed_pipeline_form_is_typed_and_checked(prefect_server: PrefectServer) -> None:
    from prefect.client.orchestration import get_client
    from prefect.exceptions import PrefectHTTPStatusError
    from prefect.settings import PREFECT_API_URL, temporary_settings

    from flows.pipeline import pipeline

    with temporary_settings({PREFECT_API_URL: prefect_server.api_url}):
        deployment_id = pipeline.to_deployment(name="form-check").apply()
        with get_client(sync_client=True) as client:
            deployment = client.read_deployment(deployment_id)
            schema = deployment.parameter_openapi_schema
            assert deployment.enforce_parameter_schema

            props = schema["properties"]
            assert props["preset"]["default"] is None  # a new run: default; a resume: its own
            form = schema["definitions"]["RunOverrides"]
            assert set(form["properties"]) == set(RunConfig.model_fields) - {"preset"}
            lr = form["properties"]["lr"]
            assert {"type": "number", "exclusiveMinimum": 0, "maximum": 1} in lr["anyOf"]
            assert lr["default"] is None and "default: 0.0002" in lr["description"]
            assert "RunOverridesAugment" in schema["definitions"]

            good = {**GIVEN, "preset": "ci", "overrides": {"lr": 1e-3, "augment": {"hflip_p": 0}}}
            run = client.create_flow_run_from_deployment(deployment_id, parameters=good)
            assert run.parameters["overrides"]["lr"] == 1e-3
            for bad in ({"lr": -1}, {"n_folds": "four"}, {"lrr": 1}, {"augment": {"hflip_p": 2}}):
                with pytest.raises(PrefectHTTPStatusError) as refused:
                    client.create_flow_run_from_deployment(
                        deployment_id, parameters={**GIVEN, "overrides": bad}
                    )
                assert refused.value.response.status_code == 409, bad
            for bad in (
                {"preset": "best"},
                {"promotion_margin": -1},
                {"max_parallel_folds": 0},
                {"gpus_per_worker": -1},
                {"fold_pickup_timeout_s": 0},
                {"folds": [-1]},
            ):
                with pytest.raises(PrefectHTTPStatusError) as refused:
                    client.create_flow_run_from_deployment(
                        deployment_id, parameters={**GIVEN, **bad}
                    )
                assert refused.value.response.status_code == 409, bad
            client.delete_flow_run(run.id)
