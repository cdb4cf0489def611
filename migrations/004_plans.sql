-- fedcore schema, migration 4: indexes only, so that no request costs more as the file grows
-- (ARCHITECTURE.md, "Cost per request does not grow"; the test `store::plans` checks the plan of
-- every statement on the hot path). It adds no table and no column, so reading a file of an older
-- schema needs nothing new: the same statements run there, only without these indexes.

-- `GET /workflows/runs?workflow_id=…&status=…`: each page is one range of this index, in run_id
-- order. (`runs_by_status` and `runs_by_workflow` serve one filter alone.)
CREATE INDEX runs_by_workflow_status ON runs(workflow_id, status, run_id);

-- A quorum gate's approvals in the order they were given, which its receipt lists, without a sort.
CREATE INDEX gate_approvals_in_order ON gate_approvals(gate_id, approved_at, approver);
