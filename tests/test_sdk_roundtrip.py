"""Huawei's official Python DLI SDK lists and shows jobs against the simulator with AK/SK."""

from __future__ import annotations

import asyncio

import pytest
from huaweicloudsdkcore.auth.credentials import BasicCredentials
from huaweicloudsdkcore.exceptions.exceptions import ClientRequestException
from huaweicloudsdkdli.v1 import (
    DliClient,
    ListFlinkJobsRequest,
    ListFlinkJobsResponse,
    ShowFlinkJobRequest,
    ShowFlinkJobResponse,
)

from tests.sim_fixtures import MakeSimulator

AK, SK = "SIMAKEXAMPLE0000001", "sim-secret-key-0001"


def sdk_client(base_url: str, project_id: str, sk: str = SK) -> DliClient:
    credentials = BasicCredentials(AK, sk, project_id)
    return DliClient.new_builder().with_credentials(credentials).with_endpoint(base_url).build()


def list_jobs(client: DliClient, **params: object) -> ListFlinkJobsResponse:
    return client.list_flink_jobs(ListFlinkJobsRequest(**params))


def show_job(client: DliClient, job_id: int) -> ShowFlinkJobResponse:
    return client.show_flink_job(ShowFlinkJobRequest(job_id=job_id))


async def test_sdk_lists_jobs_as_the_simulator_holds_them(make_simulator: MakeSimulator):
    async with make_simulator(aksk={AK: SK}, jobs_per_project=15) as (sim, base_url):
        pid = sim.project_ids[1]
        client = sdk_client(base_url, pid)
        light = await asyncio.to_thread(list_jobs, client, limit=100, order="asc")
        detailed = await asyncio.to_thread(
            list_jobs, client, limit=5, offset=5, show_detail=True, job_type="flink_jar_job"
        )
        truth = {job_id: sim.job(pid, job_id) for job_id in sim.fleet.projects[pid].jobs}
    assert light.is_success == "true"
    assert light.job_list.total_count == 15
    assert [j.job_id for j in light.job_list.jobs] == sorted(
        truth, key=lambda i: (truth[i]["create_time"], i)
    )
    for job in light.job_list.jobs:
        expected = truth[job.job_id]
        assert (job.name, job.status, job.user_name) == (
            expected["name"],
            expected["status"],
            expected["user_name"],
        )
    jar_jobs = [i for i in truth if truth[i]["job_type"] == "flink_jar_job"]
    assert detailed.job_list.total_count == len(jar_jobs)
    for job in detailed.job_list.jobs:
        assert job.job_config.cu_number == truth[job.job_id]["job_config"]["cu_number"]
        assert job.update_time == truth[job.job_id]["update_time"]


async def test_sdk_shows_a_job_with_every_value_the_simulator_has(make_simulator: MakeSimulator):
    async with make_simulator(aksk={AK: SK}) as (sim, base_url):
        pid = sim.project_ids[0]
        job_id = max(sim.fleet.projects[pid].jobs)
        sim.update_job(pid, job_id, desc="changed by the test", job_config={"parallel_number": 7})
        shown = await asyncio.to_thread(show_job, sdk_client(base_url, pid), job_id)
        expected = sim.job(pid, job_id)
    assert (shown.is_success, shown.message) == ("true", "Job detail query succeeds.")
    detail = shown.job_detail.to_dict()
    sdk_fields = {k: v for k, v in expected.items() if k in detail and k != "job_config"}
    assert len(sdk_fields) >= 24  # every detail field the SDK models, bar job_config
    assert {k: detail[k] for k in sdk_fields} == sdk_fields
    config = detail["job_config"]
    assert {k: config[k] for k in expected["job_config"] if k in config} == {
        k: v for k, v in expected["job_config"].items() if k in config
    }
    assert config["parallel_number"] == 7
    assert detail["desc"] == "changed by the test"


async def test_sdk_with_a_wrong_secret_key_is_refused_401(make_simulator: MakeSimulator):
    async with make_simulator(aksk={AK: SK}) as (sim, base_url):
        pid = sim.project_ids[0]
        client = sdk_client(base_url, pid, sk="not-the-secret")
        with pytest.raises(ClientRequestException) as caught:
            await asyncio.to_thread(list_jobs, client, limit=10)
    assert caught.value.status_code == 401
    assert caught.value.error_code == "APIG.0301"
    assert caught.value.error_msg.endswith("verify aksk signature fail")
    assert caught.value.request_id
    assert sim.requests[("unauthorized", pid)] == 1
