"""aaclip.demo: `aaclip-demo`, the no-download end-to-end run (synthetic data -> train -> eval -> ...).

It sits on top of every other package and is imported by none.
"""
