"""Workflow.services: the services a workflow's code can call, found from what its code names
(for the cold-start configuration check and the generated deployment template)."""

from __future__ import annotations

import types

from pydantic import BaseModel

from lambda_workflow import Service, WorkflowContext, workflow


class Req(BaseModel):
    n: int


alpha = Service("alpha", Req, Req)
beta = Service("beta", Req, Req)
gamma = Service("gamma", Req, Req)
unused = Service("unused", Req, Req)  # named by no workflow below

# a "module" of services, as `from app import services` then `services.delta`
catalog = types.ModuleType("catalog")
catalog.delta = Service("delta", Req, Req)  # type: ignore[attr-defined]
catalog.epsilon = Service("epsilon", Req, Req)  # type: ignore[attr-defined]


async def _helper(ctx: WorkflowContext[Req]) -> Req:
    return await ctx.call(beta, ctx.request)


@workflow
async def direct(ctx: WorkflowContext[Req]) -> Req:
    return await ctx.call(alpha, ctx.request)


@workflow
async def through_a_helper(ctx: WorkflowContext[Req]) -> Req:
    first = await ctx.call(alpha, ctx.request)
    return await _helper(ctx) if first.n else first


@workflow
async def through_a_module(ctx: WorkflowContext[Req]) -> Req:
    return await ctx.call(catalog.delta, ctx.request)


def _make() -> object:
    chosen = gamma

    @workflow
    async def closure(ctx: WorkflowContext[Req]) -> Req:
        async def inner() -> Req:
            return await ctx.call(chosen, ctx.request)
        return await inner()

    return closure


closure_wf = _make()
ROUTES = {"a": alpha}


@workflow(services=[gamma])
async def declared(ctx: WorkflowContext[Req]) -> Req:
    return await ctx.call(ROUTES["a"], ctx.request)


@workflow
async def parent(ctx: WorkflowContext[Req]) -> Req:
    return await ctx.child(direct, ctx.request)


def test_a_service_the_workflow_names_is_found() -> None:
    assert [s.name for s in direct.services] == ["alpha"]


def test_services_behind_helper_functions_are_found() -> None:
    assert [s.name for s in through_a_helper.services] == ["alpha", "beta"]


def test_only_the_module_attributes_the_code_names_are_found() -> None:
    assert [s.name for s in through_a_module.services] == ["delta"]


def test_services_in_closures_and_nested_functions_are_found() -> None:
    assert [s.name for s in closure_wf.services] == ["gamma"]  # type: ignore[attr-defined]


def test_declared_services_join_those_found_and_a_dict_of_services_is_followed() -> None:
    assert [s.name for s in declared.services] == ["alpha", "gamma"]


def test_child_workflows_are_found_and_their_services_stay_theirs() -> None:
    assert parent.children == (direct,)
    assert parent.services == ()


def test_services_takes_service_objects_only() -> None:
    import pytest

    async def body(ctx: WorkflowContext[Req]) -> Req:
        return ctx.request

    with pytest.raises(TypeError, match="services= takes Service objects"):
        workflow(body, services=["alpha"])  # type: ignore[list-item]
