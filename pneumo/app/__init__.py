"""Streamlit glue shared by the pages (the only code that imports Streamlit), the deployment's settings and the charts."""
