"""The release tool: `python -m release` generates the student kit from solutions/.

    markers.py     solution/stub markers -> the student's version of a source file
    build.py       the manifest, the assignment/ tree and the reproducible zips
    gates.py       the checks a release must pass (leaks, signatures, stability, tests, grader)
    cli.py         the command line and the order of the steps
    manifest.toml  what is stripped, copied, excluded and shipped
"""
