"""pneumo dashboard entry point: page config, navigation and the shared sidebar."""

import streamlit as st

st.set_page_config(
    page_title="pneumo · chest X-ray pneumonia screening", page_icon=":material/pulmonology:", layout="wide"
)

from pneumo.core.memory import limit_malloc_arenas, map_large_allocations  # noqa: E402

limit_malloc_arenas()  # before any thread pool starts
map_large_allocations()  # films and maps go back to the kernel when freed, not into the heap

from pneumo.app.sessions import track_session  # noqa: E402 - after the allocator settings above
from pneumo.app.ui import ENTRY_MARK, settings, sidebar  # noqa: E402

st.session_state[ENTRY_MARK] = True
track_session()  # its uploads and pictures are released once it has closed for good

pages = [
    st.Page("pages/home.py", title="Overview", icon=":material/home:", default=True),
    st.Page("pages/predict.py", title="Predict", icon=":material/radiology:"),
    st.Page("pages/threshold.py", title="Threshold", icon=":material/tune:"),
    st.Page("pages/explore.py", title="Dataset Explorer", icon=":material/bar_chart:"),
    st.Page("pages/train.py", title="Train", icon=":material/model_training:"),
]
navigation = st.navigation(pages)
sidebar(settings())
navigation.run()
