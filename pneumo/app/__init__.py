"""Streamlit glue shared by the pages (the only code that imports Streamlit), settings and charts."""
