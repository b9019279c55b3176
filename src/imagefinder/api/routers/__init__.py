"""The API's routes, one router per resource; each gets the shared Service through `Depends(get_service)`."""
