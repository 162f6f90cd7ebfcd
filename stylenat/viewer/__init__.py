"""The browser viewer: a page served from the machine the model lives on (``scripts/viewer.py``).

render     parameters, the render lock with newest-wins tickets, the LRU cache, the renders (plain Python)
attention  one clicked pixel's attention weights per layer and head group (over stylenat.attention_maps)
app        the FastAPI app (imported lazily: ``pip install 'stylenat[viewer]'``)
server     ``run_viewer``: load the snapshot, bind the socket (localhost unless told), serve with uvicorn
bench      server time per image, for ``scripts/benchmark.py viewer``
"""
