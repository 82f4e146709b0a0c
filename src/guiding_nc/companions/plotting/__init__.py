"""Figures for the book: every function returns a :class:`matplotlib.figure.Figure` with labelled axes.

One submodule per topic (``guiding_nc.companions.plotting.<topic>``); the book imports from them so
no figure is drawn by code that lives only in a notebook.
"""
