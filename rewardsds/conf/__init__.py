"""The Hydra configs of ``rewardsds`` (the package ``rewardsds.conf``; ``conf/`` at the top of the checkout links here).

The CLI finds them through Hydra's ``pkg://rewardsds.conf`` search path, so an installed wheel runs from any
folder. Layout: ``config.yaml`` (root) and one folder per config group, one YAML per option.
"""
