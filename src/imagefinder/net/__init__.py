"""The one network layer: which addresses may be fetched (policy), how (client), how often (retry).

The crawl downloader (`ingest.download`) and the API's fetch of a URL a stranger sends
(`client.safe_fetch`) both go through `client.fetch_with`, so they share the address check,
the user agent, the size cap while streaming, the wall-clock deadline, the error wording and
the back-off rules. Nothing here knows about images beyond sending ``Accept: image/*``.
"""
