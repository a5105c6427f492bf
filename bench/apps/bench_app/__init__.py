"""The app bench/signed_requests.py serves (`APP_PACKAGES`): one signed endpoint that answers
from the request alone, as an app's fast endpoint would."""
