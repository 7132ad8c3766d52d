"""pneumo dashboard entry point: page config, navigation and the shared sidebar."""

import streamlit as st

st.set_page_config(
    page_title="pneumo · chest X-ray pneumonia screening", page_icon=":material/pulmonology:", layout="wide"
)

from pneumo.core.memory import limit_malloc_arenas, map_large_allocations  # noqa: E402

limit_malloc_arenas()  # before any thread pool starts
map_large_allocations()  # films and maps go back to the kernel when freed, not into the heap

from pneumo.app import auth  # noqa: E402
from pneumo.app.sessions import track_session  # noqa: E402 - after the allocator settings above
from pneumo.app.ui import ENTRY_MARK, settings, sidebar  # noqa: E402

st.session_state[ENTRY_MARK] = True
track_session()  # its uploads and pictures are released once it has closed for good

# With sign-in ([auth] in the secrets), a visitor who has not signed in sees the sign-in screen alone, and the run
# stops here; without it, this is the app as it always was (auth.gate returns at once).
access = auth.gate()

# A page this session's role may not open is hidden from the menu, and opened by its URL it says why instead of
# running (pneumo.app.auth.PAGE_ACTIONS says what each page needs).
PAGES = [
    ("pages/home.py", "Overview", ":material/home:"),
    ("pages/predict.py", "Predict", ":material/radiology:"),
    ("pages/threshold.py", "Threshold", ":material/tune:"),
    ("pages/explore.py", "Dataset Explorer", ":material/bar_chart:"),
    ("pages/train.py", "Train", ":material/model_training:"),
    ("pages/monitor.py", "Monitor", ":material/monitoring:"),
]
pages = [
    st.Page(path, title=title, icon=icon, default=i == 0, visibility="visible" if access.may_open(path) else "hidden")
    for i, (path, title, icon) in enumerate(PAGES)
]
navigation = st.navigation(pages)
auth.user_panel(access)
sidebar(settings())
path, title, _ = next(s for s, p in zip(PAGES, pages) if p is navigation or p.url_path == navigation.url_path)
if access.may_open(path):
    navigation.run()
else:
    auth.refuse_page(access, path, title)
