"""What tests share beside fixtures: polling, the servers, a worker, the CLI, the queue.

conftest.py files hold fixtures only; a helper a test imports lives here.
"""
