"""``python -m node_agent.serve_flows --name NODE``: serve the node-side flows as Prefect
deployments ``FLOW/NODE`` (started and stopped by :class:`node_agent.agent.NodeAgent`).

Runs against ``PREFECT_API_URL``; each flow run is a subprocess with ``CIDFLOW_HOME`` set to
the node's home, so its store is the node's cache in front of the cluster.
"""

from __future__ import annotations

import argparse


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="node_agent.serve_flows")
    parser.add_argument("--name", required=True, help="Node name: the deployments' name.")
    parser.add_argument("--limit", type=int, default=1, help="Flow runs at once on this node.")
    args = parser.parse_args(argv)

    from prefect import serve

    from flows.remote import node_flows

    deployments = [
        fn.to_deployment(name=args.name, tags=["cidflow", f"node:{args.name}"])
        for fn in node_flows().values()
    ]
    serve(*deployments, limit=args.limit, print_starting_message=False)


if __name__ == "__main__":
    main()
