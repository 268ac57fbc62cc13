"""What a person runs: the `bld` command, the demo and its time plan, and the browser app.

    cli.py          the parser and `main` (`bld ...`)
    commands.py     what each sub-command does, a few library calls each
    demo.py         `bld demo`: the whole job on a built-in dataset
    demo_report.py  the demo's figures and its Markdown report
    budget.py       the demo's time plan: calibration, then step counts that fit --minutes
    figures.py      pictures of a trained pipeline: trajectory, one row of samples per class
    doctor.py       `bld doctor`: what this machine is to the project
    serve.py        `bld serve`: the gradio page over a trained run
    handlers.py     the page's handlers and HTTP API, testable without a browser

The top layer: it may import every other package; nothing imports it.
"""
