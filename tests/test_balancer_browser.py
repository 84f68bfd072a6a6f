"""The balancer manager in a real browser (Debian's chromium and chromium-driver, driven by selenium): the page
renders, shows each member's state, and its forms disable and enable a member.

Selenium blocks, so the browser runs in a thread while the reactor serves accel and the origins.
"""

from __future__ import annotations

import os
import shutil

from twisted.internet import defer, threads
from twisted.trial import unittest

from tests.test_balancer import Cluster

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMEDRIVER = shutil.which("chromedriver")
SCREENSHOT = os.environ.get("ACCEL_MANAGER_SCREENSHOT")  # where to save a picture of the page, if anywhere


def browser():
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for argument in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--window-size=1400,700"):
        options.add_argument(argument)
    return webdriver.Chrome(options=options, service=Service(executable_path=CHROMEDRIVER))


def states(driver) -> dict[str, str]:
    from selenium.webdriver.common.by import By

    return {row.get_attribute("data-route"): row.find_element(By.CSS_SELECTOR, "td.state").text
            for row in driver.find_elements(By.CSS_SELECTOR, "tr[data-route]")}


def press(driver, route: str, action: str) -> None:
    """Press a member's button and wait for the page the answer (303) brings back."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.wait import WebDriverWait

    row = driver.find_element(By.CSS_SELECTOR, f'tr[data-route="{route}"]')
    row.find_element(By.CSS_SELECTOR, f'button[value="{action}"]').click()
    WebDriverWait(driver, 30).until(lambda _: _left_the_page(row))
    WebDriverWait(driver, 30).until(lambda d: d.find_elements(By.CSS_SELECTOR, "tr[data-route]"))


def _left_the_page(element) -> bool:
    """Whether ``element`` belongs to a page the browser has left. Selenium's ``staleness_of`` knows only
    the stale-element error; Chromium may instead say the node "does not belong to the document" while the
    new page replaces the old one."""
    from selenium.common.exceptions import StaleElementReferenceException, WebDriverException

    try:
        element.is_enabled()
    except StaleElementReferenceException:
        return True
    except WebDriverException as e:
        if "does not belong to the document" in str(e):
            return True
        raise
    return False


class ManagerInABrowser(unittest.TestCase):
    timeout = 120

    def setUp(self):
        if not (CHROMIUM and CHROMEDRIVER):
            raise unittest.SkipTest("chromium and chromium-driver are not installed (.ci/run installs them)")

    @defer.inlineCallbacks
    def test_the_page_shows_the_members_and_its_forms_disable_and_enable_one(self):
        cluster = Cluster(self, balancer='sticky_cookie = "ROUTEID"\nsticky_set = true\n'
                                         '[balancer.app.health]\nuri = "/health"\ninterval = 5',
                          members=('route = "a"\nweight = 2', 'route = "b"', 'route = "c"\nstandby = true'))
        for i in range(5):
            yield cluster.get(f"/warm{i}")
        page = cluster.url + "/accel-status"

        def in_the_browser():
            driver = browser()
            try:
                driver.get(page)
                seen = [driver.title, states(driver)]
                press(driver, "b", "disable")
                seen.append(states(driver))
                if SCREENSHOT:
                    driver.save_screenshot(SCREENSHOT)
                press(driver, "b", "enable")
                seen.append(states(driver))
                return seen
            finally:
                driver.quit()

        title, before, disabled, enabled = yield threads.deferToThread(in_the_browser)
        self.assertEqual(title, "accel status")
        self.assertEqual(before, {"a": "up", "b": "up", "c": "standby"})
        self.assertEqual(disabled, {"a": "up", "b": "disabled", "c": "standby"})
        self.assertEqual(enabled, {"a": "up", "b": "up", "c": "standby"})
        self.assertEqual(cluster.site.balancers.balancers["app"].by_route["b"].admin, "enabled")
