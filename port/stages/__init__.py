"""Stage orchestration for the CLI: resolve inputs from the manifest, call one stage, record it.

This is the CLI's floor (it may import every stage package); the stage packages themselves
(train, export, evaluate) never import each other or this package.
"""
