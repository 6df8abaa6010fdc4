from django.http import HttpRequest
from django.urls import NoReverseMatch, reverse

# (url name, label). An app that is not wired yet simply has no entry.
NAVIGATION = (("documents", "Documents"), ("chat", "Chat"), ("usage", "Usage"))


def navigation(request: HttpRequest) -> dict:
    items = []
    for name, label in NAVIGATION:
        try:
            items.append({"url": reverse(name), "label": label, "active": request.path.startswith(reverse(name))})
        except NoReverseMatch:
            continue
    return {"nav_items": items}
